// The dashboard's only script: confirmations, select-all, and the live chart. It reads
// figures as JSON and writes text and SVG attributes only, never HTML.
"use strict";

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) {
    event.preventDefault();
  }
});

document.addEventListener("change", (event) => {
  const all = event.target.closest("input[data-select-all]");
  if (!all) return;
  for (const box of document.querySelectorAll(`input[type=checkbox][name="${all.dataset.selectAll}"]`)) {
    box.checked = all.checked;
  }
});

function liveChart(svg) {
  const points = []; // { processed, failed } per second, oldest first
  const keep = 60;
  let last = null;
  const draw = () => {
    const top = Math.max(1, ...points.map((p) => Math.max(p.processed, p.failed)));
    for (const series of ["processed", "failed"]) {
      const line = points
        .map((p, i) => `${(i / (keep - 1)) * 600},${160 - (p[series] / top) * 150}`)
        .join(" ");
      svg.querySelector(`polyline.${series}`).setAttribute("points", line);
    }
    const now = points[points.length - 1];
    const rate = document.getElementById("rate");
    if (rate && now) rate.textContent = `now ${now.processed.toFixed(1)}/s processed, ${now.failed.toFixed(1)}/s failed`;
  };
  const poll = async () => {
    try {
      const response = await fetch(svg.dataset.source, { headers: { accept: "application/json" } });
      if (response.ok) {
        const figures = await response.json();
        const at = performance.now();
        for (const [key, value] of Object.entries(figures)) {
          const cell = document.querySelector(`[data-stat="${key}"]`);
          if (cell) cell.textContent = String(value);
        }
        if (last) {
          const seconds = Math.max(0.001, (at - last.at) / 1000);
          points.push({
            processed: Math.max(0, figures.processed - last.figures.processed) / seconds,
            failed: Math.max(0, figures.failed - last.figures.failed) / seconds,
          });
          if (points.length > keep) points.shift();
          draw();
        }
        last = { at, figures };
      }
    } finally {
      setTimeout(poll, 2000);
    }
  };
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  const svg = document.getElementById("chart");
  if (svg) liveChart(svg);
});
