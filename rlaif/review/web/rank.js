// Ranking mode: the reviewer orders all the answers, best first, ties allowed. Keys: a number places that
// answer next; "=" then a number ties it with the answer placed last; Backspace takes back the last; Enter
// saves once every answer is placed. Or drag answers (and the ranking's entries) into place; an entry's "="
// box ties it with the one before. The ranking is sent as answer numbers: "3,1=2,4" (tiers by commas).
(function () {
  var form = document.getElementById("rank-form");
  if (!form) return;
  var count = Number(form.dataset.count);
  var list = document.getElementById("ranking");
  var order = [];  // answer numbers, best first
  var tied = [];   // tied[i]: order[i] ties with order[i - 1]
  var tieNext = false;

  if (form.dataset.given) {  // undo: the ranking given earlier
    form.dataset.given.split(",").forEach(function (tier) {
      tier.split("=").forEach(function (number, i) { order.push(Number(number)); tied.push(i > 0); });
    });
  }

  function serialised() {
    return order.map(function (number, i) { return (i === 0 ? "" : tied[i] ? "=" : ",") + number; }).join("");
  }

  function place(number, position) {  // put answer `number` at `position` (the end when undefined)
    var found = order.indexOf(number);
    if (found >= 0) { order.splice(found, 1); tied.splice(found, 1); if (position > found) position -= 1; }
    if (position === undefined || position > order.length) position = order.length;
    order.splice(position, 0, number);
    tied.splice(position, 0, false);
    tied[0] = false;
    render();
  }

  function render() {
    tied[0] = false;
    list.textContent = "";
    order.forEach(function (number, i) {
      var entry = document.createElement("li");
      entry.draggable = true;
      entry.dataset.number = String(number);
      var tie = document.createElement("input");
      tie.type = "checkbox";
      tie.title = "tied with the one before";
      tie.checked = tied[i];
      tie.disabled = i === 0;
      tie.addEventListener("change", function () { tied[i] = tie.checked; render(); });
      var label = document.createElement("label");
      label.appendChild(tie);
      label.appendChild(document.createTextNode("="));
      entry.appendChild(label);
      entry.appendChild(document.createTextNode(" Answer " + number));
      list.appendChild(entry);
    });
    document.getElementById("ranking-value").value = serialised();
    document.getElementById("save-ranking").disabled = order.length !== count;
    document.getElementById("ranking-hint").hidden = order.length === count;
    document.querySelectorAll(".ranking-answers .answer").forEach(function (answer) {
      var at = order.indexOf(Number(answer.dataset.number));
      answer.classList.toggle("placed", at >= 0);
    });
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "=") { event.preventDefault(); tieNext = order.length > 0; return; }
    if (event.key === "Backspace") {
      event.preventDefault();
      order.pop(); tied.pop(); tieNext = false; render();
      return;
    }
    if (event.key === "Enter" && order.length === count) { event.preventDefault(); form.submit(); return; }
    var number = Number(event.key);
    if (event.key.length === 1 && number >= 1 && number <= count && order.indexOf(number) < 0) {
      event.preventDefault();
      place(number);
      tied[order.length - 1] = tieNext;
      tieNext = false;
      render();
    }
  });

  // Drag and drop: an answer or an entry, dropped on an entry, goes before it; dropped on the list, at its end.
  var dragged = null;
  document.querySelectorAll(".ranking-answers .answer").forEach(function (answer) {
    answer.addEventListener("dragstart", function (event) {
      dragged = Number(answer.dataset.number);
      event.dataTransfer.setData("text/plain", String(dragged));
    });
  });
  list.addEventListener("dragstart", function (event) {
    var entry = event.target.closest("li");
    if (entry) { dragged = Number(entry.dataset.number); event.dataTransfer.setData("text/plain", String(dragged)); }
  });
  var bar = list.parentElement;
  bar.addEventListener("dragover", function (event) { event.preventDefault(); });
  bar.addEventListener("drop", function (event) {
    event.preventDefault();
    if (dragged === null) return;
    var entry = event.target.closest && event.target.closest("#ranking li");
    place(dragged, entry ? order.indexOf(Number(entry.dataset.number)) : undefined);
    dragged = null;
  });

  render();
})();
