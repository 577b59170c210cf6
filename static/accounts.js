// Email account forms: provider presets fill the server fields; sections follow the protocols.
(function () {
  "use strict";
  var form = document.getElementById("account-form");
  if (!form) { return; }
  var presets = JSON.parse(form.dataset.presets || "{}");

  function field(name) { return form.elements.namedItem(name); }

  function setServer(prefix, server) {
    if (!server || !field(prefix + "_host")) { return; }
    field(prefix + "_host").value = server.host;
    field(prefix + "_port").value = server.port;
    field(prefix + "_security").value = server.security;
  }

  function receiverServer(preset) {
    var protocol = field("receiver_protocol") ? field("receiver_protocol").value : "imap";
    return protocol === "pop3" ? preset.pop3 : preset.imap;
  }

  function limitGraph() {
    var preset = presets[field("provider").value] || {};
    ["sender_protocol", "receiver_protocol"].forEach(function (name) {
      var select = field(name);
      if (!select) { return; }
      Array.prototype.forEach.call(select.options, function (option) {
        if (option.value === "graph") { option.disabled = !preset.graph; }
      });
      if (select.value === "graph" && !preset.graph) {
        select.value = select.options[0].value;
      }
    });
  }

  function showSections() {
    var sender = field("sender_protocol");
    var receiver = field("receiver_protocol");
    form.querySelectorAll("[data-show-sender]").forEach(function (el) {
      el.classList.toggle("d-none", !!sender && el.dataset.showSender !== sender.value);
    });
    form.querySelectorAll("[data-show-receiver]").forEach(function (el) {
      var wanted = el.dataset.showReceiver.split(" ");
      el.classList.toggle("d-none", !!receiver && wanted.indexOf(receiver.value) < 0);
    });
    var security = field("receiver_security");
    if (security && receiver) {
      Array.prototype.forEach.call(security.options, function (option) {
        if (option.value === "starttls") { option.disabled = receiver.value === "pop3"; }
      });
      if (receiver.value === "pop3" && security.value === "starttls") { security.value = "ssl"; }
    }
    var shared = field("receiver_use_sender_credentials");
    var receiverAuth = field("receiver_auth");
    var oauth = !!receiverAuth && receiverAuth.value === "oauth";
    var sharedBox = shared && shared.closest(".form-check");
    if (sharedBox) { sharedBox.classList.toggle("d-none", oauth); }
    form.querySelectorAll("[data-own-credentials]").forEach(function (el) {
      el.classList.toggle("d-none", !oauth && !!shared && shared.checked);
    });
    var passwordBox = field("receiver_password") && field("receiver_password").closest(".col-md-6");
    if (passwordBox) { passwordBox.classList.toggle("d-none", oauth); }
  }

  field("provider").addEventListener("change", function () {
    var preset = presets[field("provider").value];
    if (preset) {
      setServer("smtp", preset.smtp);
      setServer("receiver", receiverServer(preset));
    }
    limitGraph();
    showSections();
  });
  if (field("receiver_protocol")) {
    field("receiver_protocol").addEventListener("change", function () {
      var preset = presets[field("provider").value];
      if (preset) { setServer("receiver", receiverServer(preset)); }
      showSections();
    });
  }
  ["sender_protocol", "receiver_use_sender_credentials", "receiver_auth"].forEach(function (name) {
    if (field(name)) { field(name).addEventListener("change", showSections); }
  });
  limitGraph();
  showSections();
})();
