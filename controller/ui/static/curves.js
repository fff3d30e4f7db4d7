// Training curves on the experiment page: every shown run overlaid per metric, with
// smoothing (the raw curve stays, faint), log scale and x by step, tokens or time.
// Smoothing is TensorBoard's debiased exponential moving average, drawn only for series
// of at least `data-smooth-min` points (a short series is drawn raw: an average over three
// points lags far behind them). Axis ticks are labelled by magnitude (2e-4, never "0" for
// a small nonzero value), as runners/train/curves.py's tick_label does for the PNGs.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const labels = JSON.parse(document.getElementById("chart-labels").textContent);
  const smoothMin = parseInt(document.getElementById("curves").dataset.smoothMin, 10);
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

  function decimals(spacing) {
    for (let d = 0; d < 10; d++) {
      const scaled = spacing * Math.pow(10, d);
      if (Math.abs(scaled - Math.round(scaled)) < 1e-6 * Math.max(1, scaled)) return d;
    }
    return 10;
  }

  function scientific(value) {
    const [mantissa, exponent] = value.toExponential(3).split("e");
    return mantissa.replace(/\.?0+$/, "") + "e" + parseInt(exponent, 10);
  }

  // A tick's label: "0" only for zero; scientific when the axis's largest value
  // (`magnitude`) is under 1e-3 or reaches 1e5; otherwise as many decimals as the tick
  // spacing needs.
  function tickLabel(value, spacing, magnitude) {
    if (value === null || !isFinite(value)) return "";
    const step = Math.abs(spacing) || Math.abs(value);
    if (value === 0 || Math.abs(value) < step * 1e-9) return "0"; // zero, or float noise at zero
    const size = magnitude || Math.abs(value);
    if (size < 1e-3 || size >= 1e5) return scientific(value);
    return value.toFixed(decimals(step));
  }

  // A hovered value: four significant digits, by magnitude.
  function readout(u, value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return scientific(value);
    return String(Number(value.toPrecision(4)));
  }

  // uPlot's axis `values`: every label of an axis uses the smallest gap between its ticks.
  function tickLabels(u, splits) {
    const shown = splits.filter(function (v) { return v !== null && isFinite(v); });
    let spacing = Infinity;
    for (let i = 1; i < shown.length; i++) {
      const gap = Math.abs(shown[i] - shown[i - 1]);
      if (gap > 0) spacing = Math.min(spacing, gap);
    }
    if (!isFinite(spacing)) spacing = 0;
    const magnitude = Math.max.apply(null, shown.map(Math.abs).concat([0]));
    return splits.map(function (v) { return tickLabel(v, spacing, magnitude); });
  }

  // An axis wide enough for its longest label.
  function axisSize(u, values) {
    const longest = Math.max.apply(null, (values || []).map(function (v) { return v ? v.length : 0; }).concat([1]));
    return Math.max(40, Math.ceil(longest * 7.5) + 18);
  }
  window.llmopsCurves = { smooth: smooth, tickLabels: tickLabels, smoothMin: smoothMin };

  function draw(element) {
    const metric = element.dataset.metric;
    const axis = document.getElementById("x-axis").value;
    const weight = parseFloat(document.getElementById("smoothing").value);
    const log = document.getElementById("log-scale").checked;
    const tables = [];
    const series = [{ label: axis, value: readout }];
    const value = readout;
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
      const label = labels[run] || run;
      const points = { show: xs.length < smoothMin };
      if (weight > 0 && xs.length >= smoothMin) {
        tables.push([xs, ys], [xs, smooth(ys, weight)]);
        series.push({ label: label + " (raw)", stroke: colour + "40", width: 1, points: { show: false }, spanGaps: true, value: value });
        series.push({ label: label + " (smoothed)", stroke: colour, width: 2, points: points, spanGaps: true, value: value });
      } else {
        tables.push([xs, ys]);
        series.push({ label: label, stroke: colour, width: 2, points: points, spanGaps: true, value: value });
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
        axes: [
          { label: axis === "time" ? "time (s)" : axis, values: tickLabels },
          { values: tickLabels, size: axisSize },
        ],
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
