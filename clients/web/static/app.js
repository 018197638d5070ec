// The databus live view: one websocket to the server, which sends the scans list, the
// selected scan's plot rows (every point, or min/max per pixel column), its latest frame
// in 8 bits, spectra and mesh map. No build step: this module, uPlot and the CSS.
// window.databusView holds the page's state (tests and bench/web.py read it).

// viridis (matplotlib), 255 colours for the codes 1..255 the server sends; 0: no value.
const VIRIDIS =
  "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769" +
  "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a" +
  "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85" +
  "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b" +
  "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d" +
  "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e" +
  "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e" +
  "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21918c" +
  "20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f881fa088" +
  "1fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad8128ae80" +
  "29af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc743fbc73" +
  "40bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc8635ec962" +
  "60ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d84d44b" +
  "86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32addc30" +
  "b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21ad8e219" +
  "dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725";

const LUT = new Uint8Array(256 * 4);
LUT.set([60, 60, 60, 255], 0);
for (let i = 0; i < 255; i++) {
  const rgb = VIRIDIS.substr(6 * i, 6);
  LUT.set([0, 2, 4].map((o) => parseInt(rgb.substr(o, 2), 16)).concat(255), 4 * (i + 1));
}

const $ = (id) => document.getElementById(id);
const state = {
  connected: false,
  connects: 0,
  allowSet: false,
  maxFps: 0,
  sessions: [],
  scans: [],
  clockOffset: 0,
  selected: null,
  follow: true,
  plot: { scan: null, bin: 0, rows: 0, points: 0, cols: {}, updates: 0 },
  frame: { channel: null, index: -1, drawn: 0, factor: 1, shape: null, levels: null },
  mesh: { channel: null, points: -1, drawn: 0 },
  spectra: {},
  shared: {},
  errors: [],
  pixel: null,
  onPoints: null,
};
window.databusView = state;

let ws = null;
let plot = null;
let plotKey = "";
let drawPending = false;

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${location.pathname.replace(/[^/]*$/, "")}ws${location.search}`;
}

function connect() {
  ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    state.connected = true;
    state.connects += 1;
    setStatus("live", false);
    sendView();
  };
  ws.onclose = () => {
    state.connected = false;
    setStatus("disconnected: reconnecting…", true);
    setTimeout(connect, 500);
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onBinary(event.data);
  };
}

function setStatus(text, down) {
  $("status").textContent = text;
  $("status").classList.toggle("down", down);
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function plotWidth() {
  return Math.max(100, Math.min(4096, Math.round($("plot").clientWidth || 800)));
}

function sendView() {
  const same = state.plot.scan === state.selected;
  const auto = $("levels-auto").checked;
  const low = parseFloat($("level-low").value);
  const high = parseFloat($("level-high").value);
  send({
    op: "view",
    scan: state.selected,
    width: plotWidth(),
    frame: [512, 512],
    image: $("image-select").value || null,
    levels: auto || !(high > low) ? null : [low, high],
    log: $("image-log").checked,
    mesh: $("mesh-select").value || null,
    bin: same ? state.plot.bin : 0,
    rows: same ? state.plot.rows : 0,
  });
}

function onText(message) {
  if (message.type === "hello") {
    state.allowSet = message.allow_set;
    state.maxFps = message.max_fps;
  } else if (message.type === "scans") {
    state.clockOffset = Date.now() / 1000 - message.now;
    state.sessions = message.sessions;
    state.scans = message.scans;
    if (state.follow && state.scans.length && state.selected !== state.scans[0].key) {
      select(state.scans[0].key, true);
    }
    renderScans();
    renderDetail();
  } else if (message.type === "shared") {
    state.shared = message.values;
    renderShared();
  } else if (message.type === "pixel") {
    state.pixel = message;
    showFrameInfo();
  } else if (message.type === "error") {
    state.errors.push(message.message);
    console.warn("databus web:", message.message);
  }
}

function decode(buffer) {
  const view = new DataView(buffer);
  const size = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, size)));
  const arrays = {};
  let offset = 4 + size;
  for (const item of header.arrays) {
    const type = item.dtype.endsWith("f8") ? Float64Array : Uint8Array;
    arrays[item.name] = new type(buffer, offset, item.n);
    offset += item.n * type.BYTES_PER_ELEMENT;
    offset += (8 - (offset % 8)) % 8;
  }
  return [header, arrays];
}

function onBinary(buffer) {
  const [header, arrays] = decode(buffer);
  if (header.scan !== state.selected) return;
  if (header.type === "points") onPoints(header, arrays);
  else if (header.type === "frame") onFrame(header, arrays.pixels);
  else if (header.type === "mesh") onMesh(header, arrays.pixels);
  else if (header.type === "spectrum") onSpectrum(header, arrays);
}

// ------------------------------------------------------------------ the line plot

function onPoints(header, arrays) {
  const p = state.plot;
  if (p.scan !== header.scan || p.bin !== header.bin || header.from === 0) {
    if (header.from !== 0) return;
    Object.assign(p, { scan: header.scan, bin: header.bin, rows: 0, cols: {} });
  }
  if (header.from > p.rows) return;
  for (const [name, values] of Object.entries(arrays)) {
    const col = p.cols[name] || (p.cols[name] = []);
    col.length = Math.min(col.length, header.from);
    for (let i = 0; i < values.length; i++) col.push(Number.isNaN(values[i]) ? null : values[i]);
  }
  p.rows = p.cols.index.length;
  p.points = header.points;
  p.updates += 1;
  if (state.onPoints) state.onPoints(header, arrays, performance.timeOrigin + performance.now());
  scheduleDraw();
}

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    drawPlot();
  });
}

function scalarNames(scan) {
  return Object.entries(scan.channels).filter(([, c]) => c.dim === 0 && c.kind === "array")
    .map(([name]) => name);
}

function chosenY(scan) {
  return [...document.querySelectorAll("#y-choices input:checked")].map((i) => i.value)
    .filter((name) => name in scan.channels);
}

function drawPlot() {
  const scan = selectedScan();
  const p = state.plot;
  if (!scan || p.scan !== scan.key || !p.cols.index) return;
  const xName = $("x-select").value || "index";
  const ys = chosenY(scan).filter((name) => p.cols[name]);
  const x = p.cols[xName] || p.cols.index;
  const logY = $("log-y").checked;
  const key = [scan.key, xName, logY, ...ys].join("|");
  const data = [x.map((v) => (v === null ? NaN : v)), ...ys.map((name) => p.cols[name])];
  if (plot === null || key !== plotKey) {
    if (plot) plot.destroy();
    plotKey = key;
    const colours = ["#1e88e5", "#e53935", "#43a047", "#8e24aa", "#fb8c00", "#00897b"];
    plot = new uPlot({
      width: plotWidth(),
      height: 300,
      scales: { x: { time: false }, y: logY ? { distr: 3 } : {} },
      axes: [{ label: xName }, {}],
      series: [{ label: xName }, ...ys.map((name, i) => ({
        label: name, stroke: colours[i % colours.length], spanGaps: false,
      }))],
    }, data, $("plot"));
  } else {
    plot.setData(data);
  }
  showFit(data);
}

function showFit(data) {
  // the first curve's peak: position of its maximum and full width at half maximum
  if (data.length < 2 || data[0].length < 3) {
    $("fit").textContent = "";
    return;
  }
  const [x, y] = data;
  let top = -1;
  for (let i = 0; i < y.length; i++) if (y[i] !== null && (top < 0 || y[i] > y[top])) top = i;
  const finite = y.filter((v) => v !== null);
  const half = (Math.max(...finite) + Math.min(...finite)) / 2;
  let lo = top;
  let hi = top;
  while (lo > 0 && y[lo - 1] !== null && y[lo - 1] > half) lo--;
  while (hi < y.length - 1 && y[hi + 1] !== null && y[hi + 1] > half) hi++;
  const fwhm = Math.abs(x[hi] - x[lo]);
  $("fit").textContent = `peak ${fmt(x[top])}, FWHM ${fmt(fwhm)}`;
}

function fmt(v) {
  return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toPrecision(5);
}

// ------------------------------------------------------------------ images

function paint(canvas, shape, pixels) {
  const [h, w] = shape;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  const out = new Uint32Array(image.data.buffer);
  const lut = new Uint32Array(LUT.buffer);
  for (let i = 0; i < pixels.length; i++) out[i] = lut[pixels[i]];
  ctx.putImageData(image, 0, 0);
}

function onFrame(header, pixels) {
  paint($("frame"), header.shape, pixels);
  Object.assign(state.frame, {
    channel: header.channel, index: header.index, factor: header.factor, shape: header.shape,
    full: header.full, levels: header.levels,
  });
  state.frame.drawn += 1;
  showFrameInfo();
}

function showFrameInfo() {
  const f = state.frame;
  if (f.channel === null) return;
  const [lo, hi] = f.levels;
  let text = `${f.channel} #${f.index}, ${f.full[0]}×${f.full[1]}`;
  text += f.factor > 1 ? ` shown 1:${f.factor}` : "";
  text += `, levels ${fmt(lo)} … ${fmt(hi)}`;
  const px = state.pixel;
  if (px && px.channel === f.channel) text += ` | [${px.row}, ${px.col}] = ${fmt(px.value)}`;
  $("frame-info").textContent = text;
}

let pixelTimer = null;
$("frame").addEventListener("mousemove", (event) => {
  const f = state.frame;
  if (!f.shape) return;
  const rect = event.target.getBoundingClientRect();
  const row = Math.floor(((event.clientY - rect.top) / rect.height) * f.shape[0] * f.factor);
  const col = Math.floor(((event.clientX - rect.left) / rect.width) * f.shape[1] * f.factor);
  clearTimeout(pixelTimer);
  pixelTimer = setTimeout(() => send({ op: "pixel", channel: f.channel, row, col }), 30);
});

function onMesh(header, pixels) {
  paint($("mesh"), header.shape, pixels);
  Object.assign(state.mesh, {
    channel: header.channel, points: header.points, axes: header.axes, codes: pixels,
  });
  state.mesh.drawn += 1;
  const [lo, hi] = header.levels;
  const [fast, slow] = header.axes;
  const placed = fast ? ` over ${fast} (across) and ${slow} (down)` : "";
  $("mesh-info").textContent =
    `${header.channel}${placed}: ${header.points} of ${header.shape[0] * header.shape[1]} ` +
    `points, ${fmt(lo)} … ${fmt(hi)}`;
}

function onSpectrum(header, arrays) {
  let item = state.spectra[header.channel];
  if (!item) {
    const box = document.createElement("div");
    $("spectra").appendChild(box);
    const plotted = new uPlot({
      width: plotWidth(), height: 200, scales: { x: { time: false } },
      series: [{ label: "bin" }, { label: header.channel, stroke: "#6d4c41" }],
    }, [[], []], box);
    item = state.spectra[header.channel] = { box, plot: plotted, index: -1, drawn: 0 };
  }
  item.index = header.index;
  item.drawn += 1;
  item.plot.setData([Array.from(arrays.index), Array.from(arrays.y)]);
}

// ------------------------------------------------------------------ scans and channels

function selectedScan() {
  return state.scans.find((s) => s.key === state.selected) || null;
}

function select(key, following) {
  state.follow = following || (state.scans.length > 0 && state.scans[0].key === key);
  if (key === state.selected) return;
  state.selected = key;
  state.plot = { scan: null, bin: 0, rows: 0, points: 0, cols: {}, updates: 0 };
  state.frame = { channel: null, index: -1, drawn: 0, factor: 1, shape: null, levels: null };
  state.mesh = { channel: null, points: -1, drawn: 0 };
  for (const item of Object.values(state.spectra)) item.box.remove();
  state.spectra = {};
  if (plot) plot.destroy();
  plot = null;
  $("frame-info").textContent = "";
  channelsShown = "";
  renderDetail();
  sendView();
}

function elapsed(scan) {
  if (!scan.created) return "";
  const end = scan.ended || Date.now() / 1000 - state.clockOffset;
  const s = Math.max(0, end - scan.created);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function stateText(scan) {
  if (scan.gone) return "gone from the bus";
  if (scan.reason) return scan.reason;
  return scan.state.toLowerCase();
}

function renderScans() {
  const body = $("scans").tBodies[0];
  $("sessions").textContent = state.sessions.length
    ? `sessions: ${state.sessions.join(", ")}` : "no sessions on the bus yet";
  $("no-scans").hidden = state.scans.length > 0;
  const rows = state.scans.map((scan) => {
    const tr = document.createElement("tr");
    tr.dataset.key = scan.key;
    tr.classList.toggle("selected", scan.key === state.selected);
    tr.classList.toggle("gone", scan.gone);
    const frac = scan.npoints ? Math.min(1, scan.points / scan.npoints) : 0;
    const planned = scan.npoints ? `/${scan.npoints}` : "";
    tr.innerHTML =
      `<td>${scan.number}</td><td class="title"></td>` +
      `<td class="state state-${scan.state} reason-${scan.reason || ""}"></td>` +
      `<td class="progress"><span class="bar"><span style="width:${(100 * frac).toFixed(1)}%">` +
      `</span></span> <span class="count">${scan.points}${planned}</span></td>` +
      `<td class="elapsed">${elapsed(scan)}</td>`;
    tr.querySelector(".title").textContent = `${scan.session}: ${scan.title}`;
    tr.querySelector(".state").textContent = stateText(scan);
    if (scan.error) tr.querySelector(".state").title = scan.error;
    tr.onclick = () => select(scan.key, false);
    return tr;
  });
  body.replaceChildren(...rows);
}

let channelsShown = "";

function renderDetail() {
  const scan = selectedScan();
  if (!scan) return;
  $("scan-title").textContent = `${scan.number} ${scan.title}`;
  const meta = [`${stateText(scan)}`, `${scan.points}${scan.npoints ? "/" + scan.npoints : ""} points`,
    elapsed(scan)];
  $("scan-meta").textContent = meta.join(" · ") + (scan.error ? ` · ${scan.error}` : "");
  if (scan.file) {
    const path = document.createElement("span");
    path.className = "file";
    path.textContent = scan.file;
    $("scan-meta").append(" · NeXus file ", path, scan.file_complete ? "" : " (being written)");
    if (scan.download) {
      const a = document.createElement("a");
      a.href = scan.download;
      a.download = scan.file.split("/").pop();
      a.textContent = "download";
      a.className = "download";
      $("scan-meta").append(" ", a);
    }
  }
  const alerts = [];
  for (const [reason, count] of Object.entries(scan.lost)) {
    alerts.push(`${count} points ${reason === "dropped" ? "dropped" : reason}`);
  }
  for (const gap of scan.gaps) {
    alerts.push(`gap in ${gap.channel}: points ${gap.first}…${gap.first + gap.size - 1} (${gap.reason})`);
  }
  for (const why of Object.values(scan.unreadable)) alerts.push(why);
  if (scan.evicted) alerts.push("the memory guard evicted this scan");
  if (scan.gone) alerts.push("this scan is no longer in the bus (expired or evicted)");
  $("alerts").replaceChildren(...alerts.map((text) => {
    const div = document.createElement("div");
    div.className = "alert";
    div.textContent = text;
    return div;
  }));
  const names = Object.keys(scan.channels).join("|") + `|${scan.x}`;
  if (names !== channelsShown) {
    channelsShown = names;
    fillChannels(scan);
  }
  $("mesh-box").hidden = !scan.mesh;
  $("frame-box").hidden = !Object.values(scan.channels).some((c) => c.dim === 2);
}

function fillChannels(scan) {
  const scalars = scalarNames(scan);
  const xs = ["index", ...scalars];
  const xSel = $("x-select");
  const x = scan.mesh ? "index" : scan.x || "index";
  xSel.replaceChildren(...xs.map((n) => new Option(n, n, n === x, n === x)));
  const ys = scalars.filter((n) => !n.startsWith("axis:") && !n.startsWith("timer:"));
  $("y-choices").replaceChildren(...scalars.filter((n) => n !== x).map((name) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = name;
    box.checked = ys.indexOf(name) >= 0 && ys.indexOf(name) < 4;
    box.onchange = scheduleDraw;
    label.append(box, ` ${name}`);
    return label;
  }));
  const images = Object.entries(scan.channels).filter(([, c]) => c.dim === 2).map(([n]) => n);
  $("image-select").replaceChildren(...images.map((n) => new Option(n, n)));
  $("mesh-select").replaceChildren(...ys.map((n) => new Option(n, n)));
  scheduleDraw();
}

function renderShared() {
  const names = Object.keys(state.shared);
  $("no-shared").hidden = names.length > 0;
  $("shared").tBodies[0].replaceChildren(...names.map((name) => {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    const label = document.createElement("td");
    label.textContent = name;
    const value = document.createElement("td");
    value.className = "value";
    value.textContent = JSON.stringify(state.shared[name]);
    tr.append(label, value);
    if (state.allowSet) {
      const cell = document.createElement("td");
      const input = document.createElement("input");
      input.size = 10;
      input.placeholder = "JSON value";
      const button = document.createElement("button");
      button.textContent = "set";
      button.onclick = () => {
        let parsed;
        try {
          parsed = JSON.parse(input.value);
        } catch {
          parsed = input.value;
        }
        send({ op: "set", name, value: parsed });
      };
      cell.append(input, button);
      tr.append(cell);
    }
    return tr;
  }));
}

for (const id of ["image-select", "levels-auto", "level-low", "level-high", "image-log", "mesh-select"]) {
  $(id).addEventListener("change", sendView);
}
$("x-select").addEventListener("change", scheduleDraw);
$("log-y").addEventListener("change", scheduleDraw);
setInterval(() => {
  if (state.scans.some((s) => !s.ended)) renderScans();
}, 1000);
connect();
