// The page's preprocessing (deit_demo/app/web/preprocess.js) against tensors deit_demo.core.images.preprocess made
// of the bundled examples (golden/, written by scripts/golden_tensors.py from pixels PIL decoded).
import assert from "node:assert/strict";
import {createHash} from "node:crypto";
import {readFileSync, readdirSync} from "node:fs";
import {test} from "node:test";
import {gunzipSync} from "node:zlib";

import {noise, tensorFromRGB} from "../../deit_demo/app/web/preprocess.js";

const GOLDEN = new URL("./golden/", import.meta.url);
const TOLERANCE = 1e-6;
const read = (name) => readFileSync(new URL(name, GOLDEN));
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// PNG's Up filter undone: each row plus the one above, mod 256
function unfilter(bytes, width) {
  const row = width * 3;
  for (let i = row; i < bytes.length; i++) bytes[i] = (bytes[i] + bytes[i - row]) & 255;
  return bytes;
}

function maxAbsDiff(actual, expected) {
  assert.equal(actual.length, expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  return worst;
}

const cases = readdirSync(GOLDEN).filter((name) => name.endsWith(".json")).map((name) => name.slice(0, -5));
assert.ok(cases.length >= 3, "golden tensors are missing: run scripts/golden_tensors.py");

for (const name of cases) {
  test(`${name}: the page's tensor is the server's`, () => {
    const meta = JSON.parse(read(`${name}.json`));
    const rgb = unfilter(new Uint8Array(gunzipSync(read(`${name}.rgb.gz`))), meta.width);
    assert.equal(sha256(rgb), meta.rgb_sha256, "the decoded pixels read back as Python wrote them");
    const tensor = tensorFromRGB(new Uint8ClampedArray(rgb), meta.width, meta.height, meta.spec);
    const size = meta.spec.input_size;
    assert.equal(tensor.length, 3 * size * size);
    const rows = Object.entries(meta.rows);
    if (!rows.length) { // stored whole
      const whole = gunzipSync(read(`${name}.f32.gz`));
      const expected = new Float32Array(whole.buffer, whole.byteOffset, whole.length / 4);
      assert.ok(maxAbsDiff(tensor, expected) <= TOLERANCE, `max |diff| ${maxAbsDiff(tensor, expected)}`);
    }
    for (const [row, channels] of rows) {
      channels.forEach((values, c) => {
        const start = c * size * size + Number(row) * size;
        const diff = maxAbsDiff(tensor.subarray(start, start + size), values.map(Math.fround));
        assert.ok(diff <= TOLERANCE, `channel ${c}, row ${row}: max |diff| ${diff}`);
      });
    }
    // float32 arithmetic step for step as NumPy's: every bit the same, not only within the tolerance
    assert.equal(sha256(new Uint8Array(tensor.buffer)), meta.tensor_sha256);
  });
}

test("the timing input is the same fixed noise on every device", () => {
  const x = noise(4);
  assert.equal(x.length, 48);
  assert.deepEqual(Array.from(x), Array.from(noise(4)));
  assert.ok(x.every((v) => v >= -2 && v < 2));
});
