// Small SVG charts: lines over time, stacked areas over time, bars, and a
// reliability diagram (predicted probability against observed rate).
//
// Each call draws a fresh <svg> into `container`, replacing the one before:
// pages redraw on every poll instead of updating charts in place, which keeps
// this file short. The SVG is as wide as the container when drawn (its
// viewBox is set from the container's width, so text keeps its size) and
// scales with it until the next redraw.
//
// Every SVG carries data-points="<number of x points>" so browser tests can
// watch a chart grow.

import { s, clear, formatClock, formatCompact } from "./dom.js";

// Fixed colours, in order: series keep their colour as long as they keep their place.
export const PALETTE = [
  "#2563eb", // blue
  "#f97316", // orange
  "#16a34a", // green
  "#9333ea", // purple
  "#dc2626", // red
  "#0891b2", // cyan
  "#ca8a04", // amber
  "#db2777", // pink
  "#4b5563", // grey
];

const FONT = 11; // px, for the axis labels
const CHAR = 6.4; // rough width of one character at FONT; SVG text cannot be measured before it is drawn
const LEGEND_CHAR = 7.2; // the same at the legend's 12px
const LEGEND_ROW = 18;
const MARGIN = { top: 8, right: 14, bottom: 24, left: 50 };

const isValue = (v) => typeof v === "number" && Number.isFinite(v);
const colourOf = (series, i) => series.color || PALETTE[i % PALETTE.length];

// ---------------------------------------------------------------------------
// Public charts

// lineChart(container, {times, series: [{name, values, color?, dash?, axis?: "right", sparse?}],
//   unit?, rightUnit?, height?, yMin?, yMax?, xFormat?, xIntegers?})
// `times` are unix seconds (or any increasing numbers when `xFormat` says how
// to print them, e.g. training steps, with `xIntegers` so labels fall on whole
// numbers); a null value leaves a gap in its line. A `sparse` series has values
// at a few points only (a validation loss checked every n steps): its nulls are
// "not measured here", not gaps, so its points are joined across them, each
// marked with a dot, and the hover leaves it out where it has no value.
// Each series is a <g data-series="name" data-points="values present">.
export function lineChart(container, options) {
  const { times = [], series = [], height = 220 } = options;
  const chart = frame(container, times.length, height, series, options.label || "line chart");
  if (!times.length) return noData(chart);

  const left = series.filter((x) => x.axis !== "right");
  const right = series.filter((x) => x.axis === "right");
  const area = plotArea(chart, { rightAxis: right.length > 0 });
  const x = timeScale(times, area);
  const yLeft = valueScale(left.flatMap((x) => x.values), area, options);
  drawGrid(chart, area, yLeft, options.unit);
  let yRight = null;
  if (right.length) {
    yRight = alignedScale(right.flatMap((x) => x.values), area, yLeft.ticks.length - 1);
    drawRightTicks(chart, area, yRight, options.rightUnit);
  }
  drawTimeAxis(chart, area, times, x, options.xFormat || formatClock, options.xIntegers);

  series.forEach((line, i) => {
    const y = line.axis === "right" ? yRight : yLeft;
    const group = s("g", { class: "chart-series", "data-series": line.name, "data-points": line.values.filter(isValue).length });
    chart.svg.append(group);
    if (line.sparse) drawSparseLine(group, times, line.values, x, y.at, colourOf(line, i), line.dash);
    else drawLine(group, times, line.values, x, y.at, colourOf(line, i), line.dash);
  });

  addHover(chart, area, times, x, options.xFormat || formatClock, (i) =>
    series
      .filter((line) => !line.sparse || isValue(line.values[i]))
      .map((line) => ({
        name: line.name,
        colour: colourOf(line, series.indexOf(line)),
        text: withUnit(line.values[i], line.axis === "right" ? options.rightUnit : options.unit),
      })),
  );
  return chart.svg;
}

// stackedAreaChart(container, {times, series, unit?, height?}): the same inputs
// as lineChart; each series is stacked on the ones before it (null counts as 0),
// so the top edge is the total.
export function stackedAreaChart(container, options) {
  const { times = [], series = [], height = 220 } = options;
  const chart = frame(container, times.length, height, series, options.label || "stacked area chart");
  if (!times.length) return noData(chart);

  const area = plotArea(chart, { rightAxis: false });
  const x = timeScale(times, area);
  // tops[k][i]: the top of series k at point i (the sum of series 0..k).
  const tops = [];
  let below = times.map(() => 0);
  for (const item of series) {
    const top = below.map((base, i) => base + (isValue(item.values[i]) ? item.values[i] : 0));
    tops.push(top);
    below = top;
  }
  const y = valueScale(below, area, { yMin: 0, yMax: options.yMax });
  drawGrid(chart, area, y, options.unit);
  drawTimeAxis(chart, area, times, x, options.xFormat || formatClock);

  series.forEach((item, k) => {
    const top = tops[k];
    const bottom = k === 0 ? times.map(() => 0) : tops[k - 1];
    const colour = colourOf(item, k);
    if (times.length === 1) {
      // One point has no width: a bar-like tick so it still shows.
      chart.svg.append(
        s("line", {
          x1: x(times[0]), x2: x(times[0]), y1: y.at(bottom[0]), y2: y.at(top[0]),
          stroke: colour, "stroke-width": 6,
        }),
      );
      return;
    }
    const upper = times.map((t, i) => `${x(t)},${y.at(top[i])}`);
    const lower = times.map((t, i) => `${x(t)},${y.at(bottom[i])}`).reverse();
    chart.svg.append(
      s("polygon", { points: [...upper, ...lower].join(" "), fill: colour, "fill-opacity": 0.55 }),
      s("polyline", { points: upper.join(" "), fill: "none", stroke: colour, "stroke-width": 1.5 }),
    );
  });

  addHover(chart, area, times, x, options.xFormat || formatClock, (i) => [
    ...series.map((item, k) => ({
      name: item.name,
      colour: colourOf(item, k),
      text: withUnit(item.values[i], options.unit),
    })),
    { name: "total", colour: null, text: withUnit(below[i], options.unit) },
  ]);
  return chart.svg;
}

// barChart(container, {labels, values, colors?, unit?, height?, baseline?})
// Bars grow from `baseline` (0 unless said: ratings grow from their starting
// value, up for better, down for worse).
export function barChart(container, options) {
  const { labels = [], values = [], height = 200, baseline = 0 } = options;
  const chart = frame(container, labels.length, height, [], options.label || "bar chart");
  if (!labels.length) return noData(chart);

  const area = plotArea(chart, { rightAxis: false });
  const present = values.filter(isValue);
  const y = valueScale([...present, baseline], area, {
    yMin: Math.min(baseline, ...present),
  });
  drawGrid(chart, area, y, options.unit);
  // The baseline, stronger than the grid when it is not the bottom edge.
  if (baseline > y.lo) {
    chart.svg.append(
      s("line", { class: "chart-baseline", x1: area.x0, x2: area.x1, y1: y.at(baseline), y2: y.at(baseline) }),
    );
  }

  const slot = (area.x1 - area.x0) / labels.length;
  const barWidth = Math.min(64, slot * 0.6);
  const maxChars = Math.max(3, Math.floor(slot / CHAR));
  labels.forEach((label, i) => {
    const value = values[i];
    const centre = area.x0 + slot * (i + 0.5);
    const colour = (options.colors && options.colors[i]) || PALETTE[i % PALETTE.length];
    const text = String(label);
    if (isValue(value)) {
      const top = Math.min(y.at(value), y.at(baseline));
      const size = Math.max(1, Math.abs(y.at(value) - y.at(baseline)));
      chart.svg.append(
        s(
          "rect",
          { x: centre - barWidth / 2, y: top, width: barWidth, height: size, rx: 2, fill: colour },
          s("title", {}, `${text}: ${withUnit(value, options.unit)}`),
        ),
        s(
          "text",
          {
            class: "chart-value",
            x: centre,
            y: value >= baseline ? top - 4 : top + size + FONT + 2,
            "text-anchor": "middle",
          },
          withUnit(value, options.unit),
        ),
      );
    }
    chart.svg.append(
      s(
        "text",
        { class: "chart-label", x: centre, y: area.y0 + FONT + 6, "text-anchor": "middle" },
        text.length > maxChars ? `${text.slice(0, maxChars - 1)}…` : text,
        s("title", {}, text),
      ),
    );
  });
  return chart.svg;
}

// reliabilityChart(container, {series: [{name, bins, color?, dash?}], height?, label?})
// A reliability diagram: for each series, each non-empty bin's mean predicted
// probability (x) against the rate observed (y), with the diagonal a
// calibrated forecast would follow; under it, each bin's count as a bar
// (scaled per series: a benchmark has far more answers than a live window).
// `bins` are [{lower, upper, count, mean_predicted, observed_rate}] as
// GET /admin/router/calibration returns them.
export function reliabilityChart(container, options) {
  const { series = [] } = options;
  // Taller as it gets wider, so that the diagonal keeps a readable slope.
  const height = options.height || Math.round(Math.min(480, Math.max(280, (container.clientWidth || 600) * 0.75)));
  const points = series.reduce((n, x) => n + x.bins.filter((b) => b.count > 0).length, 0);
  const chart = frame(container, points, height, series, options.label || "reliability diagram");
  const area = plotArea(chart, { rightAxis: false });
  const strip = 46; // the counts' strip under the diagram
  const main = { ...area, y0: area.y0 - strip - 12 };
  const x = (p) => area.x0 + p * (area.x1 - area.x0);
  const y = (p) => main.y0 - p * (main.y0 - main.y1);

  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    chart.svg.append(
      s("line", { class: "chart-grid", x1: area.x0, x2: area.x1, y1: y(tick), y2: y(tick) }),
      s("text", { class: "chart-tick", x: area.x0 - 6, y: y(tick) + 4, "text-anchor": "end" }, String(tick)),
    );
  }
  chart.svg.append(
    s("line", { class: "chart-axis", x1: area.x0, x2: area.x1, y1: main.y0, y2: main.y0 }),
    s("line", { class: "chart-axis", x1: area.x0, x2: area.x1, y1: area.y0, y2: area.y0 }),
    s("line", { class: "chart-diagonal", x1: x(0), y1: y(0), x2: x(1), y2: y(1) }, s("title", {}, "perfect calibration")),
    s("text", { class: "chart-tick", x: area.x0 - 6, y: area.y0 - strip / 2 + 4, "text-anchor": "end" }, "n"),
  );
  for (let i = 0; i <= 10; i++) {
    const anchor = i === 0 ? "start" : i === 10 ? "end" : "middle";
    chart.svg.append(s("text", { class: "chart-tick", x: x(i / 10), y: area.y0 + FONT + 6, "text-anchor": anchor }, String(i / 10)));
  }
  if (!points) {
    chart.svg.append(
      s("text", { class: "chart-empty", x: (area.x0 + area.x1) / 2, y: (main.y0 + main.y1) / 2, "text-anchor": "middle" }, "No feedback on predicted answers yet"),
    );
  }

  series.forEach((line, k) => {
    const colour = colourOf(line, k);
    const filled = line.bins.filter((b) => b.count > 0 && isValue(b.mean_predicted) && isValue(b.observed_rate));
    const describeBin = (b) =>
      `${line.name}, ${b.lower.toFixed(1)}–${b.upper.toFixed(1)}: ${b.count} answers, ` +
      (b.count ? `predicted ${b.mean_predicted.toFixed(3)}, observed ${b.observed_rate.toFixed(3)}` : "none");
    // Counts: side by side within each bin's slot, one bar per series.
    const most = Math.max(1, ...line.bins.map((b) => b.count));
    for (const b of line.bins) {
      const slot = x(b.upper) - x(b.lower);
      const width = Math.max(1, (slot * 0.8) / series.length);
      const left = x(b.lower) + slot * 0.1 + k * width;
      const tall = b.count ? Math.max(1, (b.count / most) * strip) : 0;
      chart.svg.append(
        s("rect", { class: "chart-count", x: left, y: area.y0 - tall, width, height: tall, fill: colour }, s("title", {}, describeBin(b))),
      );
      if (k === 0 && b.count && slot > 28) {
        chart.svg.append(s("text", { class: "chart-value", x: left + width / 2, y: area.y0 - tall - 3, "text-anchor": "middle" }, formatCompact(b.count)));
      }
    }
    if (filled.length > 1) {
      const d = filled.map((b, i) => `${i ? "L" : "M"}${x(b.mean_predicted).toFixed(1)} ${y(b.observed_rate).toFixed(1)}`).join(" ");
      chart.svg.append(
        s("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round", "stroke-dasharray": line.dash ? "5 4" : null }),
      );
    }
    for (const b of filled) {
      chart.svg.append(
        s("circle", { class: "chart-dot", cx: x(b.mean_predicted), cy: y(b.observed_rate), r: 4, fill: colour }, s("title", {}, describeBin(b))),
      );
    }
  });
  return chart.svg;
}

// ---------------------------------------------------------------------------
// The frame: the <svg>, its legend, and the plot area inside the margins

function frame(container, points, height, series, label) {
  const width = Math.max(260, Math.round(container.clientWidth || 600));
  const legend = legendLayout(series, width);
  const svgHeight = height + legend.height;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${svgHeight}`,
    width: "100%",
    role: "img",
    "aria-label": label,
    "data-points": points,
  });
  for (const item of legend.items) {
    svg.append(
      s("rect", { x: item.x, y: item.y - 8, width: 12, height: 3, rx: 1.5, fill: item.colour }),
      s("text", { class: "chart-legend", x: item.x + 16, y: item.y }, item.name),
    );
  }
  clear(container, svg);
  return { svg, width, height: svgHeight, top: legend.height };
}

// Legend entries left to right, wrapping into rows when the width runs out.
function legendLayout(series, width) {
  if (!series.length) return { items: [], height: 0 };
  const items = [];
  let x = MARGIN.left;
  let row = 0;
  series.forEach((item, i) => {
    const size = 16 + String(item.name).length * LEGEND_CHAR + 18;
    if (x + size > width - MARGIN.right && x > MARGIN.left) {
      row += 1;
      x = MARGIN.left;
    }
    items.push({ name: String(item.name), colour: colourOf(item, i), x, y: 12 + row * LEGEND_ROW });
    x += size;
  });
  return { items, height: (row + 1) * LEGEND_ROW + 4 };
}

function plotArea(chart, { rightAxis }) {
  return {
    x0: MARGIN.left,
    x1: chart.width - (rightAxis ? MARGIN.left : MARGIN.right),
    y0: chart.height - MARGIN.bottom, // the bottom (SVG y grows downwards)
    y1: chart.top + MARGIN.top,
  };
}

function noData(chart) {
  chart.svg.append(
    s(
      "text",
      { class: "chart-empty", x: chart.width / 2, y: chart.top + (chart.height - chart.top) / 2, "text-anchor": "middle" },
      "No data yet",
    ),
  );
  return chart.svg;
}

// ---------------------------------------------------------------------------
// Scales and axes

// About `count` round-numbered ticks covering [min, max]: steps of 1, 2, 2.5 or 5 x 10^k.
function niceTicks(min, max, count = 4) {
  if (!(max > min)) max = min + (min === 0 ? 1 : Math.abs(min) * 0.1);
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((st) => st >= raw * 0.999);
  const lo = Math.floor(min / step + 1e-9) * step;
  const hi = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { lo, hi: Math.max(hi, lo + step), step, ticks };
}

function valueScale(values, area, { yMin, yMax } = {}) {
  const present = values.filter(isValue);
  const dataMin = present.length ? Math.min(...present) : 0;
  const dataMax = present.length ? Math.max(...present) : 1;
  const { lo, hi, ticks } = niceTicks(
    yMin !== undefined ? yMin : Math.min(0, dataMin),
    yMax !== undefined ? yMax : dataMax,
  );
  const at = (v) => area.y0 - ((v - lo) / (hi - lo)) * (area.y0 - area.y1);
  return { lo, hi, ticks, at };
}

// A right-hand scale from 0 whose ticks fall on the left scale's grid lines.
function alignedScale(values, area, intervals) {
  const present = values.filter(isValue);
  const max = present.length ? Math.max(...present) : 1;
  const step = niceTicks(0, max > 0 ? max : 1, intervals).step;
  const hi = step * intervals;
  const ticks = Array.from({ length: intervals + 1 }, (_, i) => Number((i * step).toPrecision(12)));
  const at = (v) => area.y0 - (v / hi) * (area.y0 - area.y1);
  return { lo: 0, hi, ticks, at };
}

function timeScale(times, area) {
  let lo = times[0];
  let hi = times[times.length - 1];
  if (hi === lo) {
    lo -= 1;
    hi += 1;
  }
  return (t) => area.x0 + ((t - lo) / (hi - lo)) * (area.x1 - area.x0);
}

function drawGrid(chart, area, y, unit) {
  for (const tick of y.ticks) {
    const at = y.at(tick);
    chart.svg.append(
      s("line", { class: "chart-grid", x1: area.x0, x2: area.x1, y1: at, y2: at }),
      s("text", { class: "chart-tick", x: area.x0 - 6, y: at + 4, "text-anchor": "end" }, tickText(tick, unit)),
    );
  }
  chart.svg.append(s("line", { class: "chart-axis", x1: area.x0, x2: area.x1, y1: area.y0, y2: area.y0 }));
}

function drawRightTicks(chart, area, y, unit) {
  for (const tick of y.ticks) {
    chart.svg.append(
      s("text", { class: "chart-tick", x: area.x1 + 6, y: y.at(tick) + 4, "text-anchor": "start" }, tickText(tick, unit)),
    );
  }
}

// A few evenly spaced labels along the x axis, the first and last at the ends.
function drawTimeAxis(chart, area, times, x, format, integers = false) {
  const lo = times[0];
  const hi = times[times.length - 1];
  let count = hi === lo ? 1 : Math.max(2, Math.min(7, Math.floor((area.x1 - area.x0) / 90)));
  if (integers) count = Math.min(count, hi - lo + 1);
  let previous = null;
  for (let i = 0; i < count; i++) {
    let t = count === 1 ? lo : lo + ((hi - lo) * i) / (count - 1);
    if (integers) t = Math.round(t);
    const label = format(t);
    if (label === previous) continue; // a short range prints the same second twice
    previous = label;
    const anchor = count === 1 ? "middle" : i === 0 ? "start" : i === count - 1 ? "end" : "middle";
    chart.svg.append(
      s("text", { class: "chart-tick", x: x(t), y: area.y0 + FONT + 6, "text-anchor": anchor }, label),
    );
  }
}

function tickText(value, unit) {
  return withUnit(value, unit, formatCompact);
}

function withUnit(value, unit, format = formatCompact) {
  if (!isValue(value)) return "no data";
  if (!unit) return format(value);
  return unit === "%" ? `${format(value)}%` : `${format(value)} ${unit}`;
}

// ---------------------------------------------------------------------------
// Lines

// One <path> per run of values without a gap; a lone value between two gaps is a dot.
function drawLine(svg, times, values, x, y, colour, dash) {
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      svg.append(s("circle", { cx: run[0][0], cy: run[0][1], r: 2.5, fill: colour }));
    } else if (run.length > 1) {
      const d = run.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)} ${py.toFixed(1)}`).join(" ");
      svg.append(
        s("path", {
          d,
          fill: "none",
          stroke: colour,
          "stroke-width": 2,
          "stroke-linejoin": "round",
          "stroke-linecap": "round",
          "stroke-dasharray": dash ? "5 4" : null,
        }),
      );
    }
    run = [];
  };
  times.forEach((t, i) => {
    if (isValue(values[i])) run.push([x(t), y(values[i])]);
    else flush();
  });
  flush();
}

// The present values only, joined, each with a dot: the points are where it was measured.
function drawSparseLine(svg, times, values, x, y, colour, dash) {
  const points = times.flatMap((t, i) => (isValue(values[i]) ? [[x(t), y(values[i])]] : []));
  if (points.length > 1) {
    const d = points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)} ${py.toFixed(1)}`).join(" ");
    svg.append(
      s("path", {
        d,
        fill: "none",
        stroke: colour,
        "stroke-width": 2,
        "stroke-linejoin": "round",
        "stroke-dasharray": dash ? "5 4" : null,
      }),
    );
  }
  for (const [px, py] of points) svg.append(s("circle", { class: "chart-dot", cx: px, cy: py, r: 3.5, fill: colour }));
}

// ---------------------------------------------------------------------------
// Hover: a guide line at the nearest point and a box with every series' value there

function addHover(chart, area, times, x, format, rowsAt) {
  const { svg } = chart;
  const guide = s("line", { class: "chart-guide", y1: area.y1, y2: area.y0, visibility: "hidden" });
  const box = s("g", { class: "chart-tooltip", visibility: "hidden" });
  const overlay = s("rect", {
    x: area.x0, y: area.y1, width: area.x1 - area.x0, height: area.y0 - area.y1,
    fill: "transparent",
  });
  svg.append(guide, box, overlay);

  overlay.addEventListener("mouseleave", () => {
    guide.setAttribute("visibility", "hidden");
    box.setAttribute("visibility", "hidden");
  });
  overlay.addEventListener("mousemove", (event) => {
    const matrix = svg.getScreenCTM();
    if (!matrix) return;
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    // The nearest point by x.
    let best = 0;
    for (let i = 1; i < times.length; i++) {
      if (Math.abs(x(times[i]) - point.x) < Math.abs(x(times[best]) - point.x)) best = i;
    }
    const px = x(times[best]);
    guide.setAttribute("x1", px);
    guide.setAttribute("x2", px);
    guide.setAttribute("visibility", "visible");

    const rows = rowsAt(best);
    const lines = [{ name: format(times[best]), colour: null, text: "" }, ...rows];
    const width = 20 + Math.max(...lines.map((r) => (r.text ? `${r.name}: ${r.text}` : r.name).length)) * LEGEND_CHAR;
    const height = 8 + lines.length * 15;
    const left = px + 10 + width > area.x1 ? px - 10 - width : px + 10;
    clear(box, 
      s("rect", { x: left, y: area.y1, width, height, rx: 4 }),
      ...lines.map((row, i) =>
        s(
          "text",
          { x: left + 8, y: area.y1 + 16 + i * 15, class: i === 0 ? "chart-tooltip-title" : null },
          row.colour ? s("tspan", { fill: row.colour }, "● ") : null,
          row.text ? `${row.name}: ${row.text}` : row.name,
        ),
      ),
    );
    box.setAttribute("visibility", "visible");
  });
}
