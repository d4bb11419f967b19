// The image -> tensor step of deit_demo.core.images.preprocess, to the last bit: PIL's fixed-point resampling
// (libImaging/Resample.c), its centre crop and the model's normalisation. Pure: no DOM, so Node tests it against
// tensors Python wrote (tests/js/).

const PRECISION_BITS = 22;
const CUBIC_A = -0.5;
export const FILTERS = {
  bicubic: {support: 2.0, fn: (x) => {
    x = Math.abs(x);
    if (x < 1) return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * CUBIC_A;
    return 0;
  }},
  bilinear: {support: 1.0, fn: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }},
};

// Each output pixel's window of input pixels and their weights, in PIL's 22-bit fixed point.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const fixed = new Int32Array(kk.length); // normalize_coeffs_8bpc
  for (let i = 0; i < kk.length; i++) {
    const v = kk[i] * (1 << PRECISION_BITS);
    fixed[i] = v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
  }
  return {bounds, fixed, ksize};
}

function clip8(ss) {
  if (ss >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (ss <= 0) return 0;
  return Math.floor(ss / 2 ** PRECISION_BITS);
}

// One pass along x (stride 1 pixel) or y (stride one row): PIL resamples each axis separately.
function pass(img, width, height, outSize, filter, horizontal) {
  const {bounds, fixed, ksize} = coefficients(horizontal ? width : height, outSize, filter);
  const outW = horizontal ? outSize : width, outH = horizontal ? height : outSize;
  const out = new Uint8ClampedArray(outW * outH * 3);
  const step = horizontal ? 3 : width * 3;
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const o = horizontal ? x : y;
      const lo = bounds[o * 2], n = bounds[o * 2 + 1];
      let r = 1 << (PRECISION_BITS - 1), g = r, b = r;
      let p = horizontal ? (y * width + lo) * 3 : (lo * width + x) * 3;
      for (let i = 0; i < n; i++, p += step) {
        const k = fixed[o * ksize + i];
        r += img[p] * k;
        g += img[p + 1] * k;
        b += img[p + 2] * k;
      }
      const q = (y * outW + x) * 3;
      out[q] = clip8(r);
      out[q + 1] = clip8(g);
      out[q + 2] = clip8(b);
    }
  }
  return out;
}

// RGB (3 bytes a pixel) w x h -> outW x outH: PIL's two passes, rounded to 8 bits in between.
export function resampleRGB(src, w, h, outW, outH, filter) {
  let img = src;
  if (outW !== w) img = pass(img, w, h, outW, filter, true);
  if (outH !== h) img = pass(img, outW, h, outH, filter, false);
  return img;
}

// Python's round(): halves to even
function roundHalfEven(v) {
  const f = Math.floor(v), d = v - f;
  if (d !== 0.5) return d > 0.5 ? f + 1 : f;
  return f % 2 === 0 ? f : f + 1;
}

// RGBA (a canvas's pixels, already over white) -> RGB
export function rgbFromRGBA(rgba) {
  const rgb = new Uint8ClampedArray((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

// Decoded RGB pixels -> the (1, 3, S, S) float32 tensor of core.images.preprocess for `spec` (the catalog's model).
export function tensorFromRGB(rgb, w, h, spec) {
  const short = Math.min(w, h), long = Math.max(w, h);
  const newShort = spec.resize_size, newLong = Math.trunc(newShort * long / short);
  const [rw, rh] = w <= h ? [newShort, newLong] : [newLong, newShort];
  const filter = FILTERS[spec.interpolation] || FILTERS.bicubic;
  const resized = (rw === w && rh === h) ? rgb : resampleRGB(rgb, w, h, rw, rh, filter);
  const crop = spec.input_size;
  const top = roundHalfEven((rh - crop) / 2.0), left = roundHalfEven((rw - crop) / 2.0);
  const out = new Float32Array(3 * crop * crop);
  // NumPy's float32 steps, each rounded as it rounds them: /255, - mean, / std
  const f = Math.fround, c255 = f(255);
  const mean = spec.mean.map(f), std = spec.std.map(f);
  for (let y = 0; y < crop; y++) {
    for (let x = 0; x < crop; x++) {
      const sy = y + top, sx = x + left;
      const inside = sy >= 0 && sy < rh && sx >= 0 && sx < rw; // PIL's crop pads outside with black
      for (let c = 0; c < 3; c++) {
        const v = inside ? resized[(sy * rw + sx) * 3 + c] : 0;
        out[c * crop * crop + y * crop + x] = f(f(f(v / c255) - mean[c]) / std[c]);
      }
    }
  }
  return out;
}

// A fixed pseudo-random input, the same on every device: what formats are timed on
export function noise(size) {
  const out = new Float32Array(3 * size * size);
  let s = 12345;
  for (let i = 0; i < out.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = (s / 2 ** 32) * 4 - 2;
  }
  return out;
}
