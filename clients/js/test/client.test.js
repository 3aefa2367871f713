// The SDK against the real engine, which each test starts on a free port with a fresh
// data directory (ENGINE_BIN, or the workspace's debug build). Run with
// `node --experimental-websocket --test test/` (npm test); `cargo test --workspace` runs
// it too (engine/tests/js_sdk.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

import { ChatClient, ChatError, memoryStorage } from "../src/index.js";

const here = dirname(fileURLToPath(import.meta.url));
const ENGINE = process.env.ENGINE_BIN ?? join(here, "../../../target/debug/engine");
const WAIT_MS = 15_000;
// Each test's bound: a send whose ack never comes fails the test instead of hanging it.
const TEST = { timeout: 60_000 };

/** Starts the engine; resolves with `{url, http, stop}`. */
async function engine(extra = []) {
  const data = mkdtempSync(join(tmpdir(), "sdk-test-"));
  const args = ["--listen", "127.0.0.1:0", "--reactors", "2", "--data-dir", data,
    "--presence-grace-ms", "0", "--auth-timeout-ms", "5000", ...extra];
  const child = spawn(ENGINE, args, { stdio: ["ignore", "pipe", "ignore"] });
  const line = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once("line", resolve);
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`the engine exited (${code})`)));
  });
  const addr = line.replace(/^listening on /, "");
  return {
    url: `ws://${addr}/ws`,
    http: `http://${addr}`,
    stop: () => new Promise((resolve) => {
      child.once("exit", () => { rmSync(data, { recursive: true, force: true }); resolve(); });
      child.kill("SIGTERM");
    }),
  };
}

/** Resolves when `predicate()` holds; rejects after WAIT_MS saying `what`. */
async function until(what, predicate) {
  const deadline = Date.now() + WAIT_MS;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function client(server, userId, deviceId, options = {}) {
  return new ChatClient({ url: server.url, userId, deviceId, backoffBaseMs: 50, backoffMaxMs: 400, ...options });
}

test("two clients chat: acks resolve, events are typed, typing and receipts arrive", TEST, async (t) => {
  const server = await engine();
  t.after(server.stop);
  const alice = client(server, "alice", "phone");
  const bob = client(server, "bob", "phone");
  const welcome = await alice.connect();
  assert.equal(welcome.userId, "alice");
  assert.equal(typeof welcome.epoch, "string");
  await bob.connect();
  const got = [];
  bob.on("new_message", (m) => got.push(m));
  const typing = bob.once("typing");
  alice.typing("bob", true);
  assert.equal((await typing).senderId, "alice");
  const ack = await alice.send("bob", "hello bob");
  assert.equal(ack.status, "sent");
  await until("bob's message", () => got.length === 1);
  assert.equal(got[0].content, "hello bob");
  assert.ok(Number.isInteger(got[0].seq), "an inbox event");
  const receipt = alice.once("read_receipt");
  bob.markRead(got[0].messageId, "alice");
  assert.equal((await receipt).readerId, "bob");
  const page = await bob.history("alice", { limit: 10 });
  assert.deepEqual(page.messages.map((m) => m.content), ["hello bob"]);
  alice.close();
  bob.close();
});

test("a refused message rejects its promise with the server's code", TEST, async (t) => {
  const server = await engine(["--queue-max-per-user", "1"]);
  t.after(server.stop);
  const alice = client(server, "alice", "phone");
  await alice.connect();
  assert.equal((await alice.send("offline-bob", "one")).status, "queued");
  await assert.rejects(alice.send("offline-bob", "two"), (e) => e instanceof ChatError && e.code === "queue_full");
  assert.equal(alice.pending.length, 0, "a refusal leaves the outbox");
  alice.close();
});

test("a reconnect loses nothing and repeats nothing, both ways", TEST, async (t) => {
  const server = await engine();
  t.after(server.stop);
  const storage = memoryStorage();
  const alice = client(server, "alice", "phone");
  const bob = client(server, "bob", "phone", { storage });
  await alice.connect();
  await bob.connect();
  const got = [];
  bob.on("new_message", (m) => got.push(m.content));
  for (let i = 0; i < 5; i++) await alice.send("bob", `before ${i}`);
  await until("the first five", () => got.length === 5);
  await new Promise((r) => setTimeout(r, 300)); // bob's acks go out
  const states = [];
  bob.on("state", (s) => states.push(s.state));
  // bob's connection drops without a close handshake from his side.
  bob.socket.close(4999, "test drop");
  // Meanwhile alice sends, and her own connection drops with sends in flight: the outbox
  // sends them again after her reconnect, with the same ids.
  const during = [];
  for (let i = 0; i < 5; i++) during.push(alice.send("bob", `during ${i}`));
  alice.socket.close(4999, "test drop");
  const acks = await Promise.all(during);
  assert.ok(acks.every((a) => a.status === "sent" || a.status === "queued"), JSON.stringify(acks));
  await until("bob's resume", () => states.includes("online"));
  assert.equal(bob.session.resumed, true, "resumed from the seq bob processed");
  await until("every message", () => got.length === 10);
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(got, [0, 1, 2, 3, 4].map((i) => `before ${i}`).concat([0, 1, 2, 3, 4].map((i) => `during ${i}`)));
  assert.equal(alice.pending.length, 0);
  // A new client for the same device picks up where the stored position says.
  bob.close();
  await alice.send("bob", "after");
  const again = client(server, "bob", "phone", { storage });
  const later = [];
  again.on("new_message", (m) => later.push(m.content));
  const welcome = await again.connect();
  assert.equal(welcome.resumed, true);
  await until("the message sent while bob was away", () => later.length === 1);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(later, ["after"]);
  again.close();
  alice.close();
});

test("presence and group helpers", TEST, async (t) => {
  const server = await engine();
  t.after(server.stop);
  const owner = client(server, "olga", "phone");
  const bob = client(server, "bob", "phone");
  await owner.connect();
  // Presence is visible to users who share a group.
  const created = owner.once("group_member");
  owner.createGroup("team", { access: "invite" });
  assert.equal((await created).groupId, "team");
  const added = owner.once("group_member");
  owner.addMember("team", "bob");
  assert.equal((await added).userId, "bob");
  owner.subscribePresence(["bob"]);
  await until("bob offline", () => owner.presenceOf("bob")?.online === false);
  await bob.connect();
  await until("bob online", () => owner.presenceOf("bob")?.online === true);
  const posted = bob.once("new_message");
  const ack = await owner.sendToGroup("team", "hello team");
  assert.equal(ack.status, "sent");
  assert.equal((await posted).groupId, "team");
  bob.close();
  await until("bob offline again", () => owner.presenceOf("bob")?.online === false);
  // A refused group call is an error event.
  const refused = owner.once("error");
  owner.joinGroup("");
  assert.equal((await refused).type, "error");
  owner.close();
});

test("bad options are clear errors", TEST, () => {
  assert.throws(() => new ChatClient({ url: "ws://x/ws", userId: "" , deviceId: "d" }), /userId/);
  assert.throws(() => new ChatClient({ userId: "u", deviceId: "d" }), /url/);
});
