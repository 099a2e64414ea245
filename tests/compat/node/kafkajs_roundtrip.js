// kafkajs round trip for the Kafki compat suite; driven by tests/compat/test_kafkajs.py.
// Usage: node kafkajs_roundtrip.js BOOTSTRAP TOPIC GROUP
// Creates TOPIC (2 partitions), produces (plain + gzip), consumes in GROUP, commits,
// then a second consumer in GROUP must resume from the committed offsets.
// Prints one JSON line; exit 0 = pass, 1 = assertion failed, 2 = timeout.
'use strict';
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';
const { Kafka, logLevel, CompressionTypes } = require('kafkajs');

const [bootstrap, topic, groupId] = process.argv.slice(2);
if (!groupId) { console.error('usage: kafkajs_roundtrip.js BOOTSTRAP TOPIC GROUP'); process.exit(64); }

const overall = setTimeout(() => { console.log(JSON.stringify({ ok: false, error: 'timeout', step })); process.exit(2); }, 75000);
let step = 'init';

function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }

const kafka = new Kafka({
  clientId: 'kafki-compat-kafkajs',
  brokers: bootstrap.split(","),
  logLevel: logLevel.WARN,
  connectionTimeout: 5000,
  requestTimeout: 15000,
  retry: { retries: 5, initialRetryTime: 100 },
});

async function consumeN(n, expectNoMore) {
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500,
                                    rebalanceTimeout: 15000, maxWaitTimeInMs: 200 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      got.push({ partition, offset: Number(message.offset), key: message.key && message.key.toString(),
                 value: message.value.toString(),
                 headers: Object.fromEntries(Object.entries(message.headers || {}).map(([k, v]) => [k, v.toString()])) });
      if (got.length === n) resolveDone();
    },
  });
  const t = setTimeout(() => resolveDone(), 30000);
  await done;
  clearTimeout(t);
  if (expectNoMore) { await new Promise((r) => setTimeout(r, 500)); }
  assert(got.length === n, `consumed ${got.length} of ${n}`);
  // commit next offset per partition
  const next = {};
  for (const m of got) next[m.partition] = Math.max(next[m.partition] ?? 0, m.offset + 1);
  await consumer.commitOffsets(Object.entries(next).map(([p, o]) => ({ topic, partition: Number(p), offset: String(o) })));
  await consumer.disconnect();
  return { got, next };
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  step = 'createTopics';
  const created = await admin.createTopics({ topics: [{ topic, numPartitions: 2, replicationFactor: 1 }], waitForLeaders: true, timeout: 15000 });
  assert(created === true, 'createTopics returned ' + created);
  step = 'fetchTopicMetadata';
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  assert(md.topics[0].partitions.length === 2, 'partitions ' + md.topics[0].partitions.length);

  const producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false });
  await producer.connect();
  step = 'produce';
  const msgs = (tag, n) => Array.from({ length: n }, (_, i) => ({ key: `k${i}`, value: `${tag}-${i}`, partition: i % 2, headers: { h: `v${i}` } }));
  await producer.send({ topic, acks: -1, messages: msgs('plain', 10) });
  await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP, messages: msgs('gzip', 10) });

  step = 'consume1';
  const r1 = await consumeN(20, false);
  const vals1 = r1.got.map((m) => m.value).sort();
  const want1 = [...msgs('plain', 10), ...msgs('gzip', 10)].map((m) => m.value).sort();
  assert(JSON.stringify(vals1) === JSON.stringify(want1), 'values round 1: ' + JSON.stringify(vals1));
  for (const m of r1.got) {
    const i = Number(m.value.split('-')[1]);
    assert(m.key === `k${i}` && m.headers.h === `v${i}` && m.partition === i % 2, 'key/headers/partition ' + JSON.stringify(m));
  }

  step = 'fetchOffsets';
  const offs = await admin.fetchOffsets({ groupId, topics: [topic] });
  const committed = Object.fromEntries(offs[0].partitions.map((p) => [p.partition, Number(p.offset)]));
  assert(committed[0] === 10 && committed[1] === 10, 'committed ' + JSON.stringify(committed));

  step = 'produce2';
  await producer.send({ topic, acks: -1, messages: msgs('second', 6) });
  step = 'consume2';
  const r2 = await consumeN(6, true);
  const vals2 = r2.got.map((m) => m.value).sort();
  assert(JSON.stringify(vals2) === JSON.stringify(msgs('second', 6).map((m) => m.value).sort()), 'resume values ' + JSON.stringify(vals2));
  assert(r2.got.every((m) => m.offset >= 10), 'resume offsets');

  await producer.disconnect();
  await admin.disconnect();
  return { round1: r1.got.length, round2: r2.got.length, committed };
}

main().then((res) => {
  clearTimeout(overall);
  console.log(JSON.stringify({ ok: true, ...res }));
  process.exit(0);
}).catch((e) => {
  clearTimeout(overall);
  console.log(JSON.stringify({ ok: false, step, error: String(e && e.stack || e) }));
  process.exit(1);
});
