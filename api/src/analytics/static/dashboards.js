// The dashboards use the console's login: the same session, refreshed the same way
// (`/app/api.js`), so no token is ever pasted here.
import { get, loggedIn } from "/app/api.js";

const COLORS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
const charts = {};
let timer = null;

const $ = (id) => document.getElementById(id);

function range() {
  const choice = $("range").value;
  if (choice === "custom") {
    const from = Date.parse($("from").value), to = Date.parse($("to").value);
    if (!isNaN(from) && !isNaN(to)) return { from, to };
  }
  const to = Date.now();
  return { from: to - Number(choice === "custom" ? 604800000 : choice), to };
}

const fetchJson = (path) => get(path);

const day = (s) => new Date(s * 1000).toISOString().slice(0, 10);
const hour = (s) => new Date(s * 1000).toISOString().slice(5, 13).replace("T", " ") + "h";
const sum = (rows, key) => rows.reduce((a, r) => a + Number(r[key] || 0), 0);
const uniq = (xs) => [...new Set(xs)];

// Rows grouped into one series per `seriesKey`, over the sorted values of `xKey`.
function pivot(rows, xKey, seriesKey, valueKey, label) {
  const xs = uniq(rows.map((r) => r[xKey])).sort((a, b) => a - b);
  const names = uniq(rows.map(seriesKey));
  const datasets = names.map((name, i) => ({
    label: name,
    backgroundColor: COLORS[i % COLORS.length],
    borderColor: COLORS[i % COLORS.length],
    data: xs.map((x) => sum(rows.filter((r) => r[xKey] === x && seriesKey(r) === name), valueKey)),
  }));
  return { labels: xs.map(label), datasets };
}

function bars(labels, series) {
  return {
    labels,
    datasets: series.map(([label, data], i) => ({
      label, data, backgroundColor: COLORS[i % COLORS.length], borderColor: COLORS[i % COLORS.length],
    })),
  };
}

// How each panel is drawn: its chart type and data from the panel's rows.
const VIEWS = {
  messages_per_hour: (rows) => ({ type: "bar", stacked: true,
    data: pivot(rows, "hour", (r) => r.direction + " · " + r.channel, "messages", hour) }),
  delivery_funnel: (rows) => ({ type: "bar",
    data: bars(["accepted", "sent", "delivered", "read", "failed"],
      rows.map((r) => [r.phone_number_id, [r.accepted, r.sent, r.delivered, r.read, r.failed]])) }),
  delivery_funnel_by_template: (rows) => ({ type: "bar",
    data: bars(rows.map((r) => (r.template || "(not a template)") + " · " + r.phone_number_id),
      ["attempted", "accepted", "sent", "delivered", "read", "failed"].map((k) => [k, rows.map((r) => r[k])])) }),
  delivery_latency: (rows) => ({ type: "bar",
    data: bars(rows.map((r) => r.phone_number_id), [
      ["sent→delivered p50", rows.map((r) => r.sent_to_delivered_s[0])],
      ["sent→delivered p90", rows.map((r) => r.sent_to_delivered_s[1])],
      ["delivered→read p50", rows.map((r) => r.delivered_to_read_s[0])],
      ["delivered→read p90", rows.map((r) => r.delivered_to_read_s[1])],
    ]), yTitle: "seconds" }),
  failures_by_code: (rows) => ({ type: "bar", horizontal: true,
    data: bars(rows.map((r) => r.error_code + " " + r.error_title), [["failures", rows.map((r) => r.failures)]]) }),
  conversations: (rows) => ({ type: "line",
    data: bars(rows.map((r) => day(r.day)), [["opened", rows.map((r) => r.opened)], ["resolved", rows.map((r) => r.resolved)]]) }),
  agent_first_response: (rows) => ({ type: "bar",
    data: bars(rows.map((r) => r.assignee), [
      ["p50", rows.map((r) => r.first_response_s[0])],
      ["p90", rows.map((r) => r.first_response_s[1])],
    ]), yTitle: "seconds" }),
  agent_resolution: (rows) => ({ type: "bar",
    data: bars(rows.map((r) => r.assignee), [
      ["p50", rows.map((r) => r.resolution_s[0] / 60)],
      ["p90", rows.map((r) => r.resolution_s[1] / 60)],
    ]), yTitle: "minutes" }),
  agent_load: (rows) => ({ type: "bar", stacked: true,
    data: pivot(rows, "day_start", (r) => r.assignee, "assigned", day) }),
  reply_share: (rows) => ({ type: "bar", stacked: true,
    data: bars(rows.map((r) => day(r.day)), [["API", rows.map((r) => r.api)], ["Business app", rows.map((r) => r.business_app)]]) }),
};

function draw(panel, rows) {
  const box = $("chart-" + panel.id);
  const note = $("note-" + panel.id);
  note.textContent = rows.length ? "" : "No data in this range.";
  note.className = "empty";
  const view = (VIEWS[panel.id] || (() => null))(rows);
  if (!view) return;
  const options = {
    animation: false, responsive: true, maintainAspectRatio: false,
    indexAxis: view.horizontal ? "y" : "x",
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } } },
    scales: { x: { stacked: !!view.stacked }, y: { stacked: !!view.stacked, beginAtZero: true,
      title: { display: !!view.yTitle, text: view.yTitle || "" } } },
  };
  if (charts[panel.id]) charts[panel.id].destroy();
  charts[panel.id] = new Chart(box, { type: view.type, data: view.data, options });
}

async function refresh() {
  if (!loggedIn()) {
    $("login").hidden = false;
    $("status").textContent = "not logged in";
    return;
  }
  const { from, to } = range();
  const number = $("number").value.trim();
  const query = "from=" + from + "&to=" + to + (number ? "&phone_number_id=" + encodeURIComponent(number) : "");
  $("status").textContent = "loading…";
  try {
    const { panels } = await fetchJson("/v1/analytics/panels");
    const main = $("panels");
    if (!main.children.length) {
      for (const p of panels) {
        const section = document.createElement("section");
        section.innerHTML = '<h2></h2><p></p><div class="chart"><canvas></canvas></div><div></div>';
        section.querySelector("h2").textContent = p.title;
        section.querySelector("p").textContent = p.answers;
        section.querySelector("canvas").id = "chart-" + p.id;
        section.lastElementChild.id = "note-" + p.id;
        main.appendChild(section);
      }
    }
    await Promise.all(panels.map(async (p) => {
      try {
        const data = await fetchJson("/v1/analytics/panels/" + p.id + "?" + query);
        draw(p, data.rows);
      } catch (err) {
        const note = $("note-" + p.id);
        note.textContent = err.message;
        note.className = "error";
      }
    }));
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    // 401/403: this login cannot see analytics (or ended): offer the console's login.
    if (err.status === 401 || err.status === 403) $("login").hidden = false;
    $("status").textContent = err.message;
  }
}

function schedule() {
  clearInterval(timer);
  const every = Number($("refresh").value);
  if (every > 0) timer = setInterval(refresh, every);
}

$("range").addEventListener("change", () => { $("custom").hidden = $("range").value !== "custom"; });
$("apply").addEventListener("click", () => {
  schedule();
  refresh();
});
$("refresh").addEventListener("change", schedule);
schedule();
refresh();
