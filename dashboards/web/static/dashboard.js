// Chargewatch dashboard: the little the pages do in the browser (everything works without it).
// The filter bar shows the from/to inputs only for a custom range, clears them when a preset
// range is picked, and applies a choice as soon as a select changes.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("filters");
  if (!form) { return; }
  var range = document.getElementById("f-range");
  var from = document.getElementById("f-from");
  var to = document.getElementById("f-to");
  function showCustom() {
    form.classList.toggle("preset", range.value !== "custom");
  }
  showCustom();
  range.addEventListener("change", function () {
    showCustom();
    if (range.value !== "custom") {
      from.value = "";
      to.value = "";
      submit();
    }
  });
  form.addEventListener("submit", function () {
    // Empty fields stay out of the query string, so shared links stay short.
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name && !el.value) { el.disabled = true; }
    });
  });
  function submit() {
    if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
  }
  ["f-site", "f-category", "f-severity"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { el.addEventListener("change", submit); }
  });
});
