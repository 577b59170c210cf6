// The listener form offers the folders of the chosen account: choosing another one reloads them.
document.addEventListener("DOMContentLoaded", () => {
  const picker = document.getElementById("pick-account");
  if (picker) {
    picker.addEventListener("change", () => picker.form.submit());
  }
});
