// Training curves on the experiment page: every shown run overlaid per metric, with
// smoothing (the raw curve stays, faint), log scale and x by step, tokens or time.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const runs = Object.keys(data);
  const palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const charts = {};
  window.llmopsCharts = charts;

  function smooth(values, weight) {
    let last = 0, count = 0;
    return values.map(function (v) {
      if (v === null || !isFinite(v)) return null;
      last = last * weight + (1 - weight) * v;
      count += 1;
      return last / (1 - Math.pow(weight, count));
    });
  }

  function draw(element) {
    const metric = element.dataset.metric;
    const axis = document.getElementById("x-axis").value;
    const weight = parseFloat(document.getElementById("smoothing").value);
    const log = document.getElementById("log-scale").checked;
    const tables = [];
    const series = [{ label: axis }];
    runs.forEach(function (run, i) {
      const columns = data[run];
      const xs = [], ys = [];
      columns[axis].forEach(function (x, k) {
        const y = columns[metric][k];
        if (x === null || y === null || (log && y <= 0)) return;
        xs.push(x);
        ys.push(y);
      });
      const colour = palette[i % palette.length];
      if (weight > 0) {
        tables.push([xs, ys], [xs, smooth(ys, weight)]);
        series.push({ label: run + " (raw)", stroke: colour + "40", width: 1, points: { show: false }, spanGaps: true });
        series.push({ label: run, stroke: colour, width: 2, points: { show: xs.length < 3 }, spanGaps: true });
      } else {
        tables.push([xs, ys]);
        series.push({ label: run, stroke: colour, width: 2, points: { show: xs.length < 3 }, spanGaps: true });
      }
    });
    const joined = uPlot.join(tables);
    if (charts[metric]) charts[metric].destroy();
    element.textContent = "";
    charts[metric] = new uPlot(
      {
        width: Math.min(560, element.clientWidth || 560),
        height: 240,
        scales: { x: { time: false }, y: { distr: log ? 3 : 1 } },
        axes: [{ label: axis }, {}],
        series: series,
      },
      joined,
      element
    );
  }

  function drawAll() {
    document.getElementById("smoothing-value").value = document.getElementById("smoothing").value;
    document.querySelectorAll(".chart").forEach(draw);
  }

  ["x-axis", "smoothing", "log-scale"].forEach(function (id) {
    document.getElementById(id).addEventListener("input", drawAll);
  });
  drawAll();
})();
