// Draw-a-digit page: strokes on a canvas -> PNG -> POST /predict?explain=true -> answer.
// The server does all preprocessing (crop, 20x20 fit, centre of mass), the same code as
// `digits predict-image`, and sends back the 28x28 image the model saw.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const BRUSH = 20; // px on the 280 px canvas: about MNIST's stroke width once scaled to 20x20
const strokes = []; // each stroke: [[x, y], ...] in canvas pixels
let uploaded = null; // an uploaded image drawn under the strokes ...
let uploadedFile = null; // ... and its file, sent as it is while no stroke is drawn over it
const WHITE = "rgb(255, 255, 255)";
let paper = WHITE; // the pad's colour around an upload: the upload's own paper, so that a
// light-on-dark image is not framed in white, which the server would take for its paper
let busy = false; // one request in flight at a time ...
let again = false; // ... and at most one more queued behind it
let version = 0; // bumped by every redraw: an answer can tell that the pad changed since
let sent = 0; // requests sent: an upload goes out even while a drawing's is in flight, and only
// the latest request's answer is shown
const WAIT_NOTICE_MS = 1000; // after this, "waiting for the server" ...
const TIMEOUT_MS = 20000; // ... and after this without progress, the request is given up
const UNSURE = 0.6; // a top probability under this gets a hint to draw again

function redraw() {
  version += 1;
  ctx.fillStyle = paper;
  ctx.fillRect(0, 0, pad.width, pad.height);
  if (uploaded) {
    const scale = Math.min(pad.width / uploaded.width, pad.height / uploaded.height);
    const w = uploaded.width * scale, h = uploaded.height * scale;
    ctx.drawImage(uploaded, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  }
  const ink = isDark(paper) ? "#fff" : "#000"; // strokes added to an upload write as its ink
  ctx.strokeStyle = ink;
  ctx.fillStyle = ink;
  ctx.lineWidth = BRUSH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) {
    // A tap is a dot, however many times the pointer reported the same spot (a pen does, as
    // its pressure changes): a zero-length line would draw nothing.
    const [x0, y0] = stroke[0];
    const isDot = stroke.every(([x, y]) => x === x0 && y === y0);
    ctx.beginPath();
    if (isDot) {
      ctx.arc(x0, y0, BRUSH / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(x0, y0);
      for (const point of stroke.slice(1)) ctx.lineTo(...point);
      ctx.stroke();
    }
  }
}

// An upload's paper, as the server reads it (data/images.py, _over_background): for an image
// mostly opaque, the median colour of its opaque pixels (a page, transparent margins or not); for
// one mostly transparent (strokes on nothing), the grey that contrasts with its ink. A canvas reads
// transparent pixels as black: taken for paper, they would hide dark strokes under the pad's black.
function paperColour(image) {
  const side = 64;
  const canvas = document.createElement("canvas");
  canvas.width = side;
  canvas.height = side;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, side, side);
  const { data } = context.getImageData(0, 0, side, side);
  const opaque = [[], [], []];
  let alphaSum = 0, inkSum = 0;
  for (let i = 0; i < data.length; i += 4) {
    const alpha = data[i + 3] / 255;
    const grey = Math.round((299 * data[i] + 587 * data[i + 1] + 114 * data[i + 2]) / 1000);
    alphaSum += alpha;
    inkSum += alpha * grey;
    if (alpha > 0.5) for (let c = 0; c < 3; c += 1) opaque[c].push(data[i + c]);
  }
  if (alphaSum > 0.5 * side * side) {
    const median = (values) => values.sort((a, b) => a - b)[values.length >> 1];
    return `rgb(${opaque.map(median).join(", ")})`;
  }
  return alphaSum > 0 && inkSum / alphaSum >= 128 ? "rgb(0, 0, 0)" : WHITE;
}

function isDark(colour) {
  const [r, g, b] = colour.match(/\d+/g).map(Number);
  return 0.299 * r + 0.587 * g + 0.114 * b < 128;
}

function forgetUpload() {
  uploaded = null;
  uploadedFile = null;
  paper = WHITE;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

// Pointer events cover mouse, pen and touch alike; touch-action: none (CSS) stops scrolling.
// One pointer draws at a time: a second finger is ignored rather than joined into the stroke.
let pen = null;
pad.addEventListener("pointerdown", (event) => {
  if (pen !== null || event.button !== 0) return; // the main button, a pen's tip or a finger
  if (uploadedFile && !uploaded) {
    // An upload this browser cannot show (TIFF): strokes could only go on a blank pad, which
    // is what would be sent, so the drawing starts afresh, and says so; the upload's answer,
    // if still on its way, is not shown over the drawing.
    forgetUpload();
    sent += 1;
    setStatus("the uploaded image, which this browser cannot show, was set aside for the drawing");
  }
  pen = event.pointerId;
  pad.setPointerCapture(pen); // keep the stroke when the pointer leaves the canvas
  strokes.push([point(event)]);
  redraw();
});
pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== pen) return;
  strokes[strokes.length - 1].push(point(event));
  redraw();
  requestPrediction();
});
// A press on a pad inside a text selection (a stroke begun above the box selects the page down
// through it) would drag the selection, cancelling the pointer: every stroke would end after its
// first move. Not the whole press's default: that would keep the focus on a button clicked before,
// which Space or Enter would then press.
pad.addEventListener("dragstart", (event) => event.preventDefault());
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, (event) => {
    if (event.pointerId !== pen) return;
    pen = null;
    requestPrediction();
  });
}

function undo() {
  if (pen !== null) return; // mid-stroke (Ctrl+Z): the stroke being drawn is not done yet
  if (strokes.length) strokes.pop(); else forgetUpload();
  redraw();
  requestPrediction();
}
document.getElementById("undo").addEventListener("click", undo);
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && !event.shiftKey && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
  }
});
document.getElementById("clear").addEventListener("click", () => {
  strokes.length = 0;
  forgetUpload();
  redraw();
  requestPrediction();
});
document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  event.target.value = "";
  upload(file);
});
// A file dropped anywhere on the page is uploaded: left to the browser, it would replace the page
// with the file, and the drawing be lost.
document.addEventListener("dragover", (event) => {
  if (event.dataTransfer.types.includes("Files")) event.preventDefault();
});
document.addEventListener("drop", (event) => {
  const file = event.dataTransfer.files[0];
  if (!file) return;
  event.preventDefault();
  upload(file);
});

async function upload(file) {
  strokes.length = 0;
  forgetUpload();
  redraw();
  const chosenAt = version;
  let image = null;
  try {
    image = await createImageBitmap(file);
  } catch {} // not shown here (TIFF); the server reads it, or says why not
  // Decoding a photo takes a while: a pad cleared, drawn on or given another upload meanwhile
  // is the one the user wants (else a big upload comes back after Clear, and is sent).
  if (version !== chosenAt) return;
  uploaded = image;
  if (image) paper = paperColour(image);
  uploadedFile = file;
  redraw();
  again = false; // a drawing's queued request: the drawing is gone
  sendUpload();
}

function sendUpload() {
  send(uploadedFile, uploadedFile.type || "application/octet-stream", uploadedFile.name, true,
       version);
}

function requestPrediction() {
  if (!strokes.length && !uploadedFile) { showEmpty(); return; }
  if (busy) { again = true; return; }
  if (!strokes.length) { sendUpload(); return; } // undone back to the upload: the file itself
  const finished = pen === null; // a finished stroke's answer is read out; a moving one's not
  const drawnOver = uploadedFile, drawnAt = version;
  busy = true; // from now, not once the PNG is made: moves meanwhile queue behind this one
  pad.toBlob((blob) => {
    // The PNG comes back later: an upload chosen or cleared away meanwhile replaced this pad.
    if (uploadedFile === drawnOver) send(blob, "image/png", null, finished, drawnAt);
    else settle();
  }, "image/png");
}

function settle() {
  busy = false;
  if (again) { again = false; requestPrediction(); }
}

// fileName: an upload's, which its errors name (the server calls any image body "image");
// announce: whether the answer is read out (a finished stroke's or an upload's); drawnAt: the
// pad's version the body shows.
async function send(body, type, fileName, announce, drawnAt) {
  busy = true;
  const id = ++sent;
  const sentVersion = drawnAt;
  // A late answer for a drawing that was since undone or cleared away, or overtaken by a later
  // request (an upload), is not shown.
  const stale = () => id !== sent || (sentVersion !== version && !strokes.length && !uploadedFile);
  const named = (text) => (fileName ? `${fileName}: ${text}` : text);
  const started = performance.now();
  const notice = setTimeout(() => { if (!stale()) setStatus("waiting for the server…"); },
                            WAIT_NOTICE_MS);
  try {
    let response, answer;
    try {
      response = await post("/predict?explain=true", body, type);
      // Errors the API answers carry JSON; a proxy's or a crash's may be plain text.
      const isJson = (response.getResponseHeader("Content-Type") || "").includes("json");
      answer = isJson ? JSON.parse(response.responseText) : { detail: response.responseText };
    } catch (error) {
      if (stale()) return;
      const retry = fileName ? "choose the file again" : "draw again";
      if (error.name === "TimeoutError") {
        showError(named(`no answer from the server in ${TIMEOUT_MS / 1000} s; ${retry} to retry`));
      } else if (error instanceof TypeError) { // post's: no connection
        showError(named("the server is not reachable: is `digits serve` still running?"));
      } else {
        showError(named(`a bad answer from the server (${error})`));
      }
      return;
    }
    if (stale()) return;
    if (response.status >= 200 && response.status < 300) {
      showAnswer(answer, performance.now() - started, announce, fileName !== null);
    } else {
      const detail = answer.detail || response.statusText;
      const text = typeof detail === "string" ? detail : JSON.stringify(detail);
      showError(named(text.replace(/^image: /, "")));
    }
  } finally {
    clearTimeout(notice);
    settle();
  }
}

// POST body; resolves with the answered XMLHttpRequest, rejects with a TimeoutError after
// TIMEOUT_MS without progress, or a TypeError without a connection (as fetch's). Not fetch,
// which reports no upload progress: its timeout would count the upload, and a photo of a few MB
// over a slow uplink be given up while it was still arriving, at every retry. The wait starts
// again as each part of the body goes out, and once all of it has.
function post(url, body, type) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    let timeout = null;
    const wait = () => {
      clearTimeout(timeout);
      timeout = setTimeout(() => {
        request.abort();
        reject(new DOMException(`no progress in ${TIMEOUT_MS} ms`, "TimeoutError"));
      }, TIMEOUT_MS);
    };
    // Listened to before send(), or the browser reports no upload events at all
    request.upload.addEventListener("progress", wait);
    request.upload.addEventListener("load", wait);
    request.addEventListener("load", () => { clearTimeout(timeout); resolve(request); });
    request.addEventListener("error", () => {
      clearTimeout(timeout);
      reject(new TypeError("no connection"));
    });
    request.open("POST", url);
    request.setRequestHeader("Content-Type", type);
    request.send(body);
    wait();
  });
}

function showAnswer(answer, roundTripMs, announce, isUpload) {
  document.getElementById("label").textContent = answer.label;
  const ranked = answer.probabilities.map((p, digit) => [digit, p]).sort((a, b) => b[1] - a[1]);
  if (announce) { // a finished stroke's answer, or an upload's: said once, not per move
    const percent = (p) => `${(100 * p).toFixed(p < 0.1 ? 1 : 0)} %`;
    document.getElementById("spoken").textContent = `${ranked[0][0]}, ${percent(ranked[0][1])}` +
      `; then ${ranked[1][0]}, ${percent(ranked[1][1])}`;
  }
  document.getElementById("top3").innerHTML = ranked.slice(0, 3).map(([digit, p]) =>
    `<li><b>${digit}</b><div class="bar"><span style="width:${(100 * p).toFixed(1)}%"></span>` +
    `</div><span>${(100 * p).toFixed(1)} %</span></li>`).join("");
  paintGrey(document.getElementById("seen"), answer.image);
  const caption = document.getElementById("cam-caption");
  if (answer.grad_cam) {
    paintCam(document.getElementById("cam"), answer.image, answer.grad_cam);
    caption.textContent = "Heat map: where it looked";
  } else {
    clearCanvas(document.getElementById("cam"));
    caption.textContent = answer.grad_cam_error || "Heat map unavailable";
  }
  let timing = `answered in ${roundTripMs.toFixed(0)} ms (${answer.latency_ms.toFixed(1)} ms ` +
    "of it on the server)";
  if (uploadedFile && !uploaded && !strokes.length) {
    timing += "; this browser cannot show the image, which was sent as it is";
  }
  const advice = isUpload ? "is it one digit, cropped close?" : "draw one digit, large, filling the box";
  setStatus(ranked[0][1] < UNSURE ? `${timing}; not sure: ${advice}` : timing);
}

function showEmpty() {
  document.getElementById("label").textContent = "?";
  document.getElementById("top3").innerHTML = "";
  clearCanvas(document.getElementById("seen"));
  clearCanvas(document.getElementById("cam"));
  document.getElementById("cam-caption").textContent = "Heat map: where it looked";
  document.getElementById("spoken").textContent = ""; // the next answer is read, even if alike
  setStatus("");
}

function showError(text) {
  showEmpty(); // no earlier digit's views beside the "?"
  setStatus(text, true); // #status is a live region: read out as it is shown
}

function setStatus(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function clearCanvas(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

// Paint a 28x28 array onto a canvas, each value through colour(i) -> [r, g, b], scaled up.
function paint(canvas, colour) {
  const small = new ImageData(28, 28);
  for (let i = 0; i < 784; i++) small.data.set([...colour(i), 255], 4 * i);
  const buffer = document.createElement("canvas");
  buffer.width = buffer.height = 28;
  buffer.getContext("2d").putImageData(small, 0, 0);
  const target = canvas.getContext("2d");
  target.imageSmoothingEnabled = false;
  target.drawImage(buffer, 0, 0, canvas.width, canvas.height);
}

function paintGrey(canvas, image) {
  paint(canvas, (i) => { const v = image[Math.floor(i / 28)][i % 28]; return [v, v, v]; });
}

// Grad-CAM over the digit: the heat colour blended in proportion to the heat, so the digit
// stays readable where the model did not look.
function paintCam(canvas, image, cam) {
  paint(canvas, (i) => {
    const grey = image[Math.floor(i / 28)][i % 28] * 0.6;
    const heat = cam[Math.floor(i / 28)][i % 28];
    const alpha = 0.25 + 0.6 * heat;
    return jet(heat).map((c) => Math.round(alpha * c + (1 - alpha) * grey));
  });
}

function jet(v) { // the Grad-CAM paper's colour map: blue (cold) -> red (hot)
  const channel = (offset) => Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - offset)));
  return [channel(3), channel(2), channel(1)].map((c) => Math.round(255 * c));
}

const modelInfo = document.getElementById("model-info");
fetch("/model").then((r) => {
  if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
  return r.json();
}).then((info) => {
  // A TTA score is not what this server's single pass achieves.
  const accuracy = (info.test_tta ? null : info.test_accuracy) ?? info.validation_accuracy;
  const shown = accuracy == null ? "" : `, ${(100 * accuracy).toFixed(2)} % accurate on held-out digits`;
  const parameters = info.n_parameters?.toLocaleString() ?? "?";
  modelInfo.textContent =
    `Model: ${info.model} (${parameters} parameters, ${info.backend} backend)${shown}.`;
}).catch((error) => { modelInfo.textContent = `Model: unknown (${error.message}).`; });

redraw();
