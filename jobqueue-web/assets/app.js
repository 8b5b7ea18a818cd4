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

// Processes add their counts to the totals at each heartbeat (every few seconds), so a
// rate between two polls jumps between zero and a burst; each point is the rate over the
// last ten seconds instead.
function liveChart(svg) {
  const keep = 60; // points on the chart, one per poll
  const span = 10000; // milliseconds a rate is averaged over
  const samples = []; // { at, processed, failed }
  const points = []; // { processed, failed } per second, oldest first
  const draw = () => {
    const top = Math.max(1, ...points.map((p) => Math.max(p.processed, p.failed)));
    for (const series of ["processed", "failed"]) {
      const line = points
        .map((p, i) => `${(i / (keep - 1)) * 600},${158 - (p[series] / top) * 148}`)
        .join(" ");
      svg.querySelector(`polyline.${series}`).setAttribute("points", line);
    }
    const now = points[points.length - 1];
    document.getElementById("rate").textContent =
      `now ${now.processed.toFixed(1)}/s processed, ${now.failed.toFixed(1)}/s failed; top of the chart ${top.toFixed(top < 10 ? 1 : 0)}/s`;
  };
  const poll = async () => {
    try {
      const response = await fetch(svg.dataset.source, { headers: { accept: "application/json" } });
      if (response.ok) {
        const figures = await response.json();
        for (const [key, value] of Object.entries(figures)) {
          const cell = document.querySelector(`[data-stat="${key}"]`);
          if (cell) cell.textContent = String(value);
        }
        const at = performance.now();
        samples.push({ at, processed: figures.processed, failed: figures.failed });
        while (samples.length > 2 && at - samples[1].at >= span) samples.shift();
        const first = samples[0];
        if (samples.length > 1) {
          const seconds = (at - first.at) / 1000;
          points.push({
            processed: Math.max(0, figures.processed - first.processed) / seconds,
            failed: Math.max(0, figures.failed - first.failed) / seconds,
          });
          if (points.length > keep) points.shift();
          draw();
        }
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
