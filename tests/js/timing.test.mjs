// The page's timing loop follows the server's method (measure.timing.time_interleaved): warm-up, then interleaved
// blocks with the first call of each dropped, until `runs` samples each.
import assert from "node:assert/strict";
import {test} from "node:test";

import {median, timeInterleaved, warmCall} from "../../deit_demo/app/web/timing.js";

function recorder() {
  const calls = [];
  const runner = (name) => async () => { calls.push(name); return calls.length; }; // "ms": the call's number
  return {calls, runner};
}

test("warm-up first, then blocks of `block` calls in turn, the first of each dropped", async () => {
  const {calls, runner} = recorder();
  const samples = await timeInterleaved({a: runner("a"), b: runner("b")}, {runs: 4, warmup: 2, block: 3});
  assert.deepEqual(calls.join(""), "aabb" + "aaabbb" + "aaabbb");
  assert.deepEqual(samples, {a: [6, 7, 12, 13], b: [9, 10, 15, 16]});
});

test("a block of one keeps every call, and no more than `runs` samples are kept", async () => {
  const {calls, runner} = recorder();
  assert.deepEqual(await timeInterleaved({a: runner("a")}, {runs: 3, warmup: 0, block: 1}), {a: [1, 2, 3]});
  const more = await timeInterleaved({b: runner("b")}, {runs: 3, warmup: 0, block: 3});
  assert.deepEqual(more, {b: [5, 6, 8]});
  assert.equal(calls.length, 3 + 6);
});

test("an answer's reported call comes after the spec's warm-up", async () => {
  const {calls, runner} = recorder();
  assert.equal(await warmCall(runner("a"), {warmup: 3}), 4);
  assert.equal(calls.length, 4);
  assert.equal(median([5, 1, 3]), 3);
  assert.equal(median([4, 1, 3, 2]), 2.5);
});
