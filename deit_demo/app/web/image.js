// An image file -> the tensor the server would make of it: the browser decodes it (as PIL would, orientation
// applied, transparency on white), preprocess.js does the rest. The image never leaves the page.

import {rgbFromRGBA, tensorFromRGB} from "./preprocess.js";

const MAX_PIXELS = 40e6;

export async function decodeImage(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {imageOrientation: "from-image", premultiplyAlpha: "none",
                                            colorSpaceConversion: "none"});
  } catch {
    throw new Error("This is not an image this browser can decode (or the file is damaged).");
  }
  const w = bitmap.width, h = bitmap.height;
  if (w * h > MAX_PIXELS) throw new Error(`The image is ${w}x${h} pixels; the limit is 40 megapixels.`);
  const canvas = new OffscreenCanvas(w, h);
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.fillStyle = "#fff"; // transparency on white, as the server does
  context.fillRect(0, 0, w, h);
  context.drawImage(bitmap, 0, 0);
  return {rgb: rgbFromRGBA(context.getImageData(0, 0, w, h).data), width: w, height: h};
}

// An image file's bytes -> the (1, 3, S, S) float32 tensor of core.images.preprocess, for `spec`.
export async function imageTensor(blob, spec) {
  const {rgb, width, height} = await decodeImage(blob);
  return tensorFromRGB(rgb, width, height, spec);
}
