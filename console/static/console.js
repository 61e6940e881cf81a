// The console's only script (served from 'self'; the CSP forbids inline script).
document.addEventListener("DOMContentLoaded", function () {
  var printButton = document.getElementById("print");
  if (printButton) {
    printButton.addEventListener("click", function (event) {
      event.preventDefault();
      window.print();
    });
  }
  var printedAt = document.getElementById("printed-at");
  if (printedAt) {
    printedAt.textContent = new Date().toLocaleString("zh-CN", { timeZone: "Asia/Shanghai", hour12: false });
  }
});
