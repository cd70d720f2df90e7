// tsumugi ui: the one script. It enables "Compare selected" once two runs are ticked and
// remembers the ticks across pages of the run list (sessionStorage), so runs from
// different pages can be compared. Everything else works without it.
"use strict";
(function () {
  const form = document.getElementById("compare-form");
  if (!form) return;
  const button = document.getElementById("compare");
  const key = "tsumugi.compare";
  const saved = new Set(JSON.parse(sessionStorage.getItem(key) || "[]"));
  const boxes = form.querySelectorAll('input[type=checkbox][name=run]');
  const update = function () {
    boxes.forEach(function (b) { if (b.checked) saved.add(b.value); else saved.delete(b.value); });
    sessionStorage.setItem(key, JSON.stringify(Array.from(saved)));
    button.disabled = saved.size < 2;
    button.textContent = saved.size >= 2 ? "Compare " + saved.size + " runs" : "Compare selected";
  };
  boxes.forEach(function (b) { b.checked = saved.has(b.value); b.addEventListener("change", update); });
  form.addEventListener("submit", function (e) {
    // Ticks from other pages travel too.
    e.preventDefault();
    const q = Array.from(saved).map(function (r) { return "run=" + encodeURIComponent(r); }).join("&");
    sessionStorage.removeItem(key);
    window.location.assign("/compare?" + q);
  });
  update();
})();
