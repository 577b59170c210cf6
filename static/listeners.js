// The listener form offers the folders of the chosen account: choosing another one shows its
// folders, in the same form, keeping what was typed (the "Show its folders" button).
document.addEventListener("DOMContentLoaded", () => {
  const picker = document.getElementById("pick-account");
  const show = document.getElementById("show-folders");
  if (picker && show) {
    picker.addEventListener("change", () => picker.form.requestSubmit(show));
  }
});
