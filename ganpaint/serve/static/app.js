// ganpaint serve: load a photo, paint the hole on a mask canvas of the photo's own size, send the
// original file and a white-on-black mask PNG to /api/fill, show the fills it returns.
"use strict";

const $ = (id) => document.getElementById(id);
const photoCanvas = $("photo");
const maskCanvas = $("mask");
const maskContext = maskCanvas.getContext("2d");
const FILLS = ["model", "telea", "pyramid", "harmonic", "biharmonic", "tension"];

let models = [];
let photoFile = null;
let erasing = false;
let lastPoint = null;

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

function selectedModel() {
  return models.find((model) => model.name === $("model").value);
}

async function loadModels() {
  try {
    const response = await fetch("api/models");
    models = await response.json();
  } catch (error) {
    showMessage("cannot reach the ganpaint server: is it still running?");
    return;
  }
  for (const model of models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.family}, step ${model.step})`;
    $("model").append(option);
  }
  modelChanged();
}

function modelChanged() {
  const model = selectedModel();
  $("caption-field").hidden = !(model && model.conditioning === "caption");
}

function clearResults() {
  for (const name of FILLS) {
    $(`result-${name}`).removeAttribute("src");
    $(`time-${name}`).textContent = "";
  }
  $("download").hidden = true;
}

function loadPhoto(file) {
  showMessage("");
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {
    for (const canvas of [photoCanvas, maskCanvas]) {
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
    }
    photoCanvas.getContext("2d").drawImage(image, 0, 0);
    URL.revokeObjectURL(url);
    photoFile = file;
    $("drop").hidden = true;
    $("stack").hidden = false;
    $("fill").disabled = false;
    clearResults();
    const stem = file.name.replace(/\.[^.]*$/, "") || "photo";
    $("download").download = `${stem}_filled.png`;
    setStatus(`${file.name}: ${image.naturalWidth} x ${image.naturalHeight} px. Paint the hole.`);
  };
  image.onerror = () => {
    URL.revokeObjectURL(url);
    showMessage(`${file.name}: not an image this browser can show (use PNG, JPEG or WebP)`);
  };
  image.src = url;
}

// The brush size is in screen pixels: scale it to the photo's pixels.
function brushRadius() {
  const scale = maskCanvas.width / maskCanvas.getBoundingClientRect().width;
  return (Number($("brush").value) / 2) * scale;
}

function canvasPoint(event) {
  const box = maskCanvas.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * maskCanvas.width) / box.width,
    y: ((event.clientY - box.top) * maskCanvas.height) / box.height,
  };
}

function paintTo(point) {
  maskContext.globalCompositeOperation = erasing ? "destination-out" : "source-over";
  maskContext.strokeStyle = maskContext.fillStyle = "rgb(255, 30, 30)";
  maskContext.lineCap = maskContext.lineJoin = "round";
  maskContext.lineWidth = 2 * brushRadius();
  maskContext.beginPath();
  if (lastPoint) {
    maskContext.moveTo(lastPoint.x, lastPoint.y);
    maskContext.lineTo(point.x, point.y);
    maskContext.stroke();
  } else {
    maskContext.arc(point.x, point.y, brushRadius(), 0, 2 * Math.PI);
    maskContext.fill();
  }
  lastPoint = point;
}

maskCanvas.addEventListener("pointerdown", (event) => {
  maskCanvas.setPointerCapture(event.pointerId);
  lastPoint = null;
  paintTo(canvasPoint(event));
});
maskCanvas.addEventListener("pointermove", (event) => {
  if (lastPoint) paintTo(canvasPoint(event));
});
for (const type of ["pointerup", "pointercancel"]) {
  maskCanvas.addEventListener(type, () => (lastPoint = null));
}

// What was painted (alpha > 127, as the overlay shows it) as a white-on-black PNG.
function maskBlob() {
  const { width, height } = maskCanvas;
  const painted = maskContext.getImageData(0, 0, width, height).data;
  const output = new ImageData(width, height);
  for (let i = 0; i < painted.length; i += 4) {
    const value = painted[i + 3] > 127 ? 255 : 0;
    output.data[i] = output.data[i + 1] = output.data[i + 2] = value;
    output.data[i + 3] = 255;
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").putImageData(output, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

function showResult(result, roundTripMs) {
  for (const name of FILLS) {
    $(`result-${name}`).src = result.images[name];
    $(`time-${name}`).textContent = `${Math.round(result.timings_ms[name])} ms`;
  }
  $("download").href = result.images.model;
  $("download").hidden = false;
  const windows = result.windows
    .map((w) => `${w.box[3] - w.box[2]} x ${w.box[1] - w.box[0]} px at ${w.scale.toFixed(2)}x`)
    .join(", ");
  setStatus(
    `Filled ${result.width} x ${result.height} px in ${(roundTripMs / 1000).toFixed(2)} s ` +
      `(model ${Math.round(result.timings_ms.model)} ms on ${result.windows.length} ` +
      `window${result.windows.length > 1 ? "s" : ""}: ${windows}).` +
      (result.notes || []).map((note) => ` Note: ${note}.`).join("")
  );
}

async function fill() {
  showMessage("");
  const model = selectedModel();
  if (!photoFile || !model) {
    showMessage(photoFile ? "no model to fill with" : "no photo: choose or drop a photo first");
    return;
  }
  $("fill").disabled = true;
  setStatus(`Filling with ${model.name}...`);
  const started = performance.now();
  try {
    const form = new FormData();
    form.append("image", photoFile, photoFile.name);
    form.append("mask", await maskBlob(), "mask.png");
    form.append("model", model.name);
    if (model.conditioning === "caption") form.append("caption", $("caption").value);
    const response = await fetch("api/fill", { method: "POST", body: form });
    const result = await response.json().catch(() => ({ error: `server error ${response.status}` }));
    if (!response.ok || result.error) {
      showMessage(result.error || `server error ${response.status}`);
      setStatus("");
    } else {
      showResult(result, performance.now() - started);
    }
  } catch (error) {
    showMessage(`the request failed (${error.message}): is the server still running?`);
    setStatus("");
  } finally {
    $("fill").disabled = false;
  }
}

function setErasing(value) {
  erasing = value;
  $("paint").classList.toggle("active", !value);
  $("erase").classList.toggle("active", value);
  $("paint").setAttribute("aria-pressed", String(!value));
  $("erase").setAttribute("aria-pressed", String(value));
}

$("model").addEventListener("change", modelChanged);
$("file").addEventListener("change", () => $("file").files[0] && loadPhoto($("file").files[0]));
$("brush").addEventListener("input", () => ($("brush-size").textContent = $("brush").value));
$("paint").addEventListener("click", () => setErasing(false));
$("erase").addEventListener("click", () => setErasing(true));
$("clear").addEventListener("click", () => maskContext.clearRect(0, 0, maskCanvas.width, maskCanvas.height));
$("fill").addEventListener("click", fill);
for (const zone of [$("drop"), $("stack")]) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) loadPhoto(event.dataTransfer.files[0]);
  });
}
loadModels();
