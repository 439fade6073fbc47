// Review pages: heatmap overlay controls and keyboard shortcuts. Everything works without
// this script except the shortcuts and the opacity slider (the overlay shows at 50 %).
"use strict";
(function () {
  const $ = (sel) => document.querySelector(sel);
  const overlays = () => Array.from(document.querySelectorAll(".stack img.overlay"));

  const show = $("#overlay-show");
  const range = $("#overlay-opacity");
  const output = $("#overlay-opacity-value");
  const pick = $("#overlay-detector");

  function applyOverlay() {
    const alpha = range ? Number(range.value) / 100 : 0.5;
    const on = show ? show.checked : true;
    const det = pick ? pick.value : null;
    overlays().forEach((img) => {
      const chosen = det ? img.dataset.detector === det : !img.classList.contains("other");
      img.classList.toggle("other", !chosen);
      img.classList.toggle("hidden", !on);
      img.style.opacity = String(alpha);
    });
    if (output && range) output.textContent = range.value + " %";
    try {
      if (range) localStorage.setItem("review.opacity", range.value);
      if (show) localStorage.setItem("review.overlay", on ? "1" : "0");
    } catch (e) { /* storage may be off: the controls still work */ }
  }

  if (range) {
    try {
      const saved = localStorage.getItem("review.opacity");
      if (saved !== null) range.value = saved;
      if (show && localStorage.getItem("review.overlay") === "0") show.checked = false;
    } catch (e) { /* ignore */ }
    range.addEventListener("input", applyOverlay);
    if (show) show.addEventListener("change", applyOverlay);
    if (pick) pick.addEventListener("change", applyOverlay);
    applyOverlay();
  }

  function go(...selectors) {
    for (const sel of selectors) {
      const a = $(sel);
      if (a) {
        window.location.assign(a.getAttribute("href"));
        return;
      }
    }
  }

  function mark(buttonId) {
    const form = $("#review-form");
    const button = document.getElementById(buttonId);
    if (!form || !button) return;
    const who = $("#operator");
    if (who && !who.value.trim()) {
      who.focus();
    }
    form.requestSubmit(button); // runs the browser's required-field check first
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    const typing = t && (t.tagName === "INPUT" && t.type !== "range" && t.type !== "checkbox"
      || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
    if (typing) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    const key = ev.key.toLowerCase();
    if (t && t.type === "range" && key.startsWith("arrow")) return; // slider keeps its arrows
    const actions = {
      d: () => mark("mark-defect"),
      f: () => mark("mark-false"),
      n: () => go("#next-part", "#start-review"),
      arrowright: () => go("#next-part"),
      p: () => go("#prev-part"),
      arrowleft: () => go("#prev-part"),
      q: () => go("#back-to-queue"),
      c: () => { const c = $("#comment"); if (c) c.focus(); },
      h: () => { if (show) { show.checked = !show.checked; applyOverlay(); } },
    };
    if (actions[key]) {
      ev.preventDefault();
      actions[key]();
    }
  });
})();
