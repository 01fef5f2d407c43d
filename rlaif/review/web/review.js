// Keyboard shortcuts of the review page: 1, 2, t (tie), b (both bad), s (skip).
// Keys typed into the comment box are text, not shortcuts.
document.addEventListener("keydown", function (event) {
  var target = event.target;
  if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  var button = document.querySelector('#label-form button[data-key="' + event.key.toLowerCase() + '"]');
  if (button && !button.disabled) {
    event.preventDefault();
    document.querySelectorAll("#label-form button").forEach(function (b) { b.disabled = true; });
    var form = document.getElementById("label-form");
    var choice = document.createElement("input");
    choice.type = "hidden";
    choice.name = "choice";
    choice.value = button.value;
    form.appendChild(choice);
    form.submit();
  }
});
