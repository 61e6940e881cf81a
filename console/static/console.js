// The console's only script (served from 'self'; the CSP forbids inline script).
document.addEventListener("DOMContentLoaded", function () {
  var printButton = document.getElementById("print");
  if (printButton) {
    printButton.addEventListener("click", function (event) {
      event.preventDefault();
      window.print();
    });
  }
  // A form with data-confirm (解除关联) asks once more before it is sent; the server still requires
  // its own confirmation box, so nothing rests on this script.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });
  var printedAt = document.getElementById("printed-at");
  if (printedAt) {
    printedAt.textContent = new Date().toLocaleString("zh-CN", { timeZone: "Asia/Shanghai", hour12: false });
  }
});
