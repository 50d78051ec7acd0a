// The copy button of a link's page: copies the short URL. Without script the button stays
// hidden and the URL can be selected in its field.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (btn) {
    var input = document.getElementById(btn.getAttribute("data-copy"));
    var status = document.getElementById("copy-status");
    if (!input) { return; }
    btn.hidden = false;
    btn.addEventListener("click", function () {
      var done = function () { if (status) { status.textContent = "Copied " + input.value; } };
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(input.value).then(done, function () {
          input.select();
          if (status) { status.textContent = "Press Ctrl+C to copy."; }
        });
      } else {
        input.select();
        if (status) { status.textContent = "Press Ctrl+C to copy."; }
      }
    });
  });
});
