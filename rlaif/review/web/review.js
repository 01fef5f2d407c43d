// The review page: keyboard shortcuts (1, 2, t tie, b both bad, n show me another, s set aside, u back to the
// previous pair, d what differs, l scroll together, ? the keys; where the run offers them: m much better, 3-9
// tags, g guidelines), and the hold on the open pair.
// Keys typed into the comment box are text, not shortcuts; Esc or Ctrl+Enter leaves the box (the comment
// stays), so the next key labels the pair with it.
(function () {
  var form = document.getElementById("label-form") || document.getElementById("rank-form");
  var guidelinesPanel = document.getElementById("guidelines");
  if (guidelinesPanel) {  // the link and the close button (the page's script only: no inline handlers)
    document.getElementById("show-guidelines").addEventListener("click", function (event) {
      event.preventDefault();
      guidelinesPanel.hidden = !guidelinesPanel.hidden;
    });
    document.getElementById("hide-guidelines").addEventListener("click", function () { guidelinesPanel.hidden = true; });
  }

  function submitWith(button) {
    form.querySelectorAll(".choices button").forEach(function (b) { b.disabled = true; });
    var choice = document.createElement("input");
    choice.type = "hidden";
    choice.name = "choice";
    choice.value = button.value;
    form.appendChild(choice);
    if (button.getAttribute("formaction")) form.action = button.getAttribute("formaction");
    form.submit();
  }

  var diffPanel = document.getElementById("diff");
  if (diffPanel) {
    document.getElementById("show-diff").addEventListener("click", function (event) {
      event.preventDefault();
      diffPanel.hidden = !diffPanel.hidden;
    });
  }

  // Scrolling together: each answer scrolls on its own; with the box ticked, scrolling one moves the other to
  // the same share of its length.
  var answers = document.querySelectorAll(".answers .answer");
  var following = null;  // the answer being moved by the other, so that its own scroll event is not passed back
  answers.forEach(function (answer, index) {
    answer.addEventListener("scroll", function () {
      var together = document.getElementById("scroll-together");
      if (!together || !together.checked || answers.length !== 2) return;
      if (following === answer) { following = null; return; }
      var other = answers[1 - index];
      var share = answer.scrollTop / Math.max(1, answer.scrollHeight - answer.clientHeight);
      var target = share * (other.scrollHeight - other.clientHeight);
      if (Math.abs(other.scrollTop - target) < 1) return;  // already there: no scroll event will come back
      following = other;
      other.scrollTop = target;
    });
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && target.tagName === "TEXTAREA" && form) {
      if (event.key === "Escape" || (event.key === "Enter" && (event.ctrlKey || event.metaKey))) {
        event.preventDefault();
        target.blur();
        form.querySelector(".choices").focus();
      }
      return;
    }
    if (target && target.tagName === "INPUT") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var help = document.getElementById("keys-help");
    if (help && (event.key === "?" || (event.key === "Escape" && !help.hidden))) {  // the keys, shown or hidden
      event.preventDefault();
      help.hidden = event.key === "Escape" ? true : !help.hidden;
      return;
    }
    var guidelines = document.getElementById("guidelines");
    if (guidelines && (event.key.toLowerCase() === "g" || (event.key === "Escape" && !guidelines.hidden))) {
      event.preventDefault();
      guidelines.hidden = event.key === "Escape" ? true : !guidelines.hidden;
      return;
    }
    var diff = document.getElementById("diff");
    if (diff && event.key.toLowerCase() === "d") {  // what differs, shown or hidden
      event.preventDefault();
      diff.hidden = !diff.hidden;
      return;
    }
    var together = document.getElementById("scroll-together");
    if (together && event.key.toLowerCase() === "l") {
      event.preventDefault();
      together.checked = !together.checked;
      return;
    }
    var much = form && form.querySelector('input[name=strength][value=much]');
    if (much && event.key.toLowerCase() === "m") {  // much better, or back to slightly
      event.preventDefault();
      (much.checked ? form.querySelector("input[name=strength][value=slightly]") : much).checked = true;
      return;
    }
    var tag = form && form.querySelector('input[name=tags][data-key="' + event.key + '"]');
    if (tag) {  // a tag, on or off
      event.preventDefault();
      tag.checked = !tag.checked;
      return;
    }
    var previous = document.getElementById("previous");
    if (event.key.toLowerCase() === "u" && previous) {  // undo: back to the pair labelled last
      event.preventDefault();
      window.location.href = previous.href;
      return;
    }
    if (!form) return;
    var button = form.querySelector('.choices button[data-key="' + event.key.toLowerCase() + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      submitWith(button);
    }
  });

  // The hold (lease) on the pair: renewed while the page is open and visible, its time left shown; when it
  // is lost, the page says so, keeps the comment and offers the next pair instead of the label buttons.
  // A pair labelled earlier (undo) is not held: it has no lease.
  if (!form || !form.dataset.renew) return;
  var leaseSeconds = Number(form.dataset.leaseS);
  var expiresAt = Date.now() + 1000 * Number(form.dataset.leaseLeftS);
  var every = Math.max(5, Math.min(60, leaseSeconds / 3)) * 1000;
  var csrf = form.querySelector("input[name=csrf]").value;
  var lost = false;

  function showLeft() {
    var left = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
    document.getElementById("lease-left").textContent =
      left >= 120 ? Math.floor(left / 60) + " min" : left + " s";
  }

  function loseIt() {
    lost = true;
    document.getElementById("lease").hidden = true;
    document.getElementById("lease-lost").hidden = false;
    form.querySelectorAll(".choices button").forEach(function (b) { b.disabled = true; });
  }

  function renew() {
    if (lost || document.visibilityState !== "visible") return;
    fetch(form.dataset.renew, { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 409) { loseIt(); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (body) {
        if (body) { expiresAt = Date.now() + 1000 * body.lease_s; showLeft(); }
      })
      .catch(function () { /* offline for a moment: the next renewal tries again */ });
  }

  renew();
  setInterval(renew, every);
  setInterval(function () { if (!lost) showLeft(); }, 1000);
  document.addEventListener("visibilitychange", renew);
})();
