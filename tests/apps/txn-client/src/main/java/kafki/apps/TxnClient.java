package kafki.apps;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.IntStream;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TimeoutException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Kafka transactions through the Java client (kafka-clients 4.1), one
 * scenario per run:
 *
 * <pre>java -cp target/classes:target/lib/* kafki.apps.TxnClient BOOTSTRAP SCENARIO [RF]</pre>
 *
 * Scenarios: commit-abort, send-offsets, fencing, lso. Each creates its own
 * topics (replication factor RF, default 1), prints what it observed as one line {@code RESULT {json}} (the
 * test asserts on it) and exits 0; any unexpected exception exits 1 with a
 * stack trace. The scenario does not judge: it reports facts (record values
 * read, offsets, exception class names) for the test to check.
 */
public final class TxnClient {
    private static final Duration POLL = Duration.ofMillis(100);
    private static final Duration TIMEOUT = Duration.ofSeconds(20);

    private final String bootstrap;
    private final short replicationFactor;
    private final Map<String, Object> result = new LinkedHashMap<>();

    private TxnClient(String bootstrap, short replicationFactor) {
        this.bootstrap = bootstrap;
        this.replicationFactor = replicationFactor;
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2 && args.length != 3) {
            System.err.println("usage: TxnClient BOOTSTRAP commit-abort|send-offsets|fencing|lso"
                    + " [REPLICATION_FACTOR]");
            System.exit(2);
        }
        short replicationFactor = args.length == 3 ? Short.parseShort(args[2]) : 1;
        TxnClient client = new TxnClient(args[0], replicationFactor);
        switch (args[1]) {
            case "commit-abort" -> client.commitAbort();
            case "send-offsets" -> client.sendOffsets();
            case "fencing" -> client.fencing();
            case "lso" -> client.lastStableOffset();
            default -> {
                System.err.println("unknown scenario " + args[1]);
                System.exit(2);
            }
        }
        System.out.println("RESULT " + json(client.result));
        System.out.flush();
        // Client threads (and their sockets) must not keep the JVM alive.
        System.exit(0);
    }

    // ------------------------------------------------------------ scenarios

    /** Four transactions over three partitions: rounds 0 and 2 commit, 1 and 3 abort. */
    private void commitAbort() throws Exception {
        String topic = "java-txn-basic";
        createTopic(topic, 3);
        try (KafkaProducer<String, String> producer = transactional("java-basic")) {
            producer.initTransactions();
            for (int round = 0; round < 4; round++) {
                producer.beginTransaction();
                for (int i = 0; i < 9; i++) {
                    producer.send(new ProducerRecord<>(topic, i % 3, "k" + i, "r" + round + "-" + i));
                }
                producer.flush();
                if (round % 2 == 0) {
                    producer.commitTransaction();
                } else {
                    producer.abortTransaction();
                }
            }
        }
        List<TopicPartition> partitions = partitions(topic, 3);
        try (KafkaConsumer<String, String> committed = consumer(null, "read_committed");
             KafkaConsumer<String, String> uncommitted = consumer(null, "read_uncommitted")) {
            result.put("committed_end_offsets", endOffsets(committed, partitions));
            result.put("uncommitted_end_offsets", endOffsets(uncommitted, partitions));
            result.put("committed", readToEnd(committed, partitions));
            result.put("uncommitted", readToEnd(uncommitted, partitions));
        }
    }

    /**
     * Consume-transform-produce: a group consumer reads 10 records, a
     * transactional producer writes them on with the group's offsets
     * (sendOffsetsToTransaction with the consumer's group metadata). The
     * offsets must be invisible to committed() until the commit; a second
     * round reads 5 more and aborts: the committed offsets stay.
     */
    private void sendOffsets() throws Exception {
        String input = "java-txn-in";
        String output = "java-txn-out";
        String group = "java-txn-group";
        createTopic(input, 1);
        createTopic(output, 1);
        TopicPartition in0 = new TopicPartition(input, 0);
        try (KafkaProducer<String, String> plain = plain()) {
            for (int i = 0; i < 15; i++) {
                plain.send(new ProducerRecord<>(input, 0, "k" + i, "in-" + i));
            }
            plain.flush();
        }
        KafkaConsumer<String, String> source = groupConsumer(group);
        KafkaProducer<String, String> producer = transactional("java-ctp");
        KafkaConsumer<String, String> observer = consumer(group, "read_uncommitted");
        try (source; producer; observer) {
            producer.initTransactions();
            source.subscribe(List.of(input));
            // Round 1: offsets 0..9, committed.
            List<ConsumerRecord<String, String>> first = pollCount(source, 10);
            result.put("round1_read", first.size());
            long next = first.get(first.size() - 1).offset() + 1;
            producer.beginTransaction();
            for (ConsumerRecord<String, String> r : first) {
                producer.send(new ProducerRecord<>(output, 0, r.key(), "out-" + r.value()));
            }
            producer.sendOffsetsToTransaction(Map.of(in0, new OffsetAndMetadata(next)),
                    source.groupMetadata());
            producer.flush();
            // Pending: the group's offset API answers without it, and a
            // consumer's committed() (require_stable) waits for the outcome.
            result.put("before_commit_admin", adminCommittedOffset(group, in0));
            try {
                result.put("before_commit", committedOffset(observer, in0, Duration.ofSeconds(2)));
            } catch (TimeoutException e) {
                result.put("before_commit", e.getClass().getSimpleName());
            }
            producer.commitTransaction();
            result.put("after_commit", committedOffset(observer, in0));
            // Round 2: the next 5 records, aborted.
            source.seek(in0, next);
            List<ConsumerRecord<String, String>> second = pollCount(source, 5);
            result.put("round2_read", second.size());
            long after = second.get(second.size() - 1).offset() + 1;
            producer.beginTransaction();
            for (ConsumerRecord<String, String> r : second) {
                producer.send(new ProducerRecord<>(output, 0, r.key(), "out-" + r.value()));
            }
            producer.sendOffsetsToTransaction(Map.of(in0, new OffsetAndMetadata(after)),
                    source.groupMetadata());
            producer.flush();
            producer.abortTransaction();
            result.put("after_abort", committedOffset(observer, in0));
        }
        // A read_committed consumer (committed() with require_stable) agrees.
        try (KafkaConsumer<String, String> stable = consumer(group, "read_committed")) {
            result.put("stable_committed", committedOffset(stable, in0));
            TopicPartition out0 = new TopicPartition(output, 0);
            result.put("output", readToEnd(stable, List.of(out0)).get("0"));
        }
    }

    /**
     * Zombie fencing: a second producer with the same transactional.id
     * fences the first. Case "send": the zombie sends to a partition its
     * transaction has not touched yet, then tries to commit; case "commit":
     * it tries to commit straight away. Afterwards the new producer commits
     * its own records, and a read_committed reader must see only those.
     */
    private void fencing() throws Exception {
        String topic = "java-txn-fence";
        createTopic(topic, 2);
        for (String how : List.of("send", "commit")) {
            String id = "java-fence-" + how;
            KafkaProducer<String, String> zombie = transactional(id);
            KafkaProducer<String, String> successor = transactional(id);
            try (successor) {
                zombie.initTransactions();
                zombie.beginTransaction();
                for (int i = 0; i < 3; i++) {
                    zombie.send(new ProducerRecord<>(topic, 0, "z", "zombie-" + how + "-" + i)).get(20,
                            TimeUnit.SECONDS);
                }
                successor.initTransactions();
                if (how.equals("send")) {
                    try {
                        zombie.send(new ProducerRecord<>(topic, 1, "z", "zombie-" + how + "-late"))
                                .get(20, TimeUnit.SECONDS);
                        result.put(how + "_send_error", null);
                    } catch (ExecutionException e) {
                        result.put(how + "_send_error", e.getCause().getClass().getSimpleName());
                    } catch (RuntimeException e) {
                        result.put(how + "_send_error", e.getClass().getSimpleName());
                    }
                }
                try {
                    zombie.commitTransaction();
                    result.put(how + "_commit_error", null);
                } catch (RuntimeException e) {
                    result.put(how + "_commit_error", e.getClass().getSimpleName());
                }
                zombie.close(Duration.ZERO);
                successor.beginTransaction();
                for (int i = 0; i < 2; i++) {
                    successor.send(new ProducerRecord<>(topic, i, "s", "successor-" + how + "-" + i));
                }
                successor.commitTransaction();
            }
        }
        List<TopicPartition> partitions = partitions(topic, 2);
        try (KafkaConsumer<String, String> committed = consumer(null, "read_committed");
             KafkaConsumer<String, String> uncommitted = consumer(null, "read_uncommitted")) {
            result.put("committed", readToEnd(committed, partitions));
            result.put("uncommitted", readToEnd(uncommitted, partitions));
        }
    }

    /**
     * One committed transaction of 3 records, then one left open with 5:
     * read_committed endOffsets and position stop at the last stable offset
     * (4: 3 records and the marker) while read_uncommitted sees the high
     * watermark (9); after the commit both reach 10 and the consumer reads
     * the rest.
     */
    private void lastStableOffset() throws Exception {
        String topic = "java-txn-lso";
        createTopic(topic, 1);
        TopicPartition tp = new TopicPartition(topic, 0);
        List<TopicPartition> tps = List.of(tp);
        try (KafkaProducer<String, String> producer = transactional("java-lso");
             KafkaConsumer<String, String> committed = consumer(null, "read_committed");
             KafkaConsumer<String, String> uncommitted = consumer(null, "read_uncommitted")) {
            producer.initTransactions();
            producer.beginTransaction();
            for (int i = 0; i < 3; i++) {
                producer.send(new ProducerRecord<>(topic, 0, "k", "first-" + i));
            }
            producer.commitTransaction();
            producer.beginTransaction();
            for (int i = 0; i < 5; i++) {
                producer.send(new ProducerRecord<>(topic, 0, "k", "open-" + i));
            }
            producer.flush();

            result.put("open_committed_end", committed.endOffsets(tps, TIMEOUT).get(tp));
            result.put("open_uncommitted_end", uncommitted.endOffsets(tps, TIMEOUT).get(tp));
            committed.assign(tps);
            committed.seekToBeginning(tps);
            List<String> seen = new ArrayList<>();
            // Poll for 2 s: everything below the LSO arrives, nothing beyond.
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(2);
            while (System.nanoTime() < until) {
                for (ConsumerRecord<String, String> r : committed.poll(POLL)) {
                    seen.add(r.value());
                }
            }
            result.put("open_seen", List.copyOf(seen));
            result.put("open_position", committed.position(tp, TIMEOUT));

            long committing = System.nanoTime();
            producer.commitTransaction();
            // commitTransaction returns once the coordinator has decided
            // (Kafka writes the markers after answering EndTxn): the LSO
            // reaches 10 soon after, not necessarily at once. Record every
            // read_committed end offset seen on the way, and the parked
            // consumer picking up the rest.
            List<Long> ends = new ArrayList<>();
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            while (System.nanoTime() < deadline) {
                long end = committed.endOffsets(tps, TIMEOUT).get(tp);
                if (ends.isEmpty() || ends.get(ends.size() - 1) != end) {
                    ends.add(end);
                }
                for (ConsumerRecord<String, String> r : committed.poll(POLL)) {
                    seen.add(r.value());
                }
                if (end == 10 && seen.size() >= 8 && committed.position(tp, TIMEOUT) == 10) {
                    break;
                }
            }
            result.put("closed_committed_ends", ends);
            result.put("closed_uncommitted_end", uncommitted.endOffsets(tps, TIMEOUT).get(tp));
            result.put("closed_seen", seen);
            result.put("closed_seen_ms", TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - committing));
            result.put("closed_position", committed.position(tp, TIMEOUT));
        }
    }

    // ------------------------------------------------------------ clients

    private void createTopic(String topic, int partitions) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            admin.createTopics(List.of(new NewTopic(topic, partitions, replicationFactor)))
                    .all()
                    .get(20, TimeUnit.SECONDS);
            // Wait until every partition has a leader.
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            while (true) {
                try {
                    var description = admin.describeTopics(List.of(topic)).allTopicNames()
                            .get(10, TimeUnit.SECONDS).get(topic);
                    if (description.partitions().size() == partitions
                            && description.partitions().stream().allMatch(p -> p.leader() != null)) {
                        return;
                    }
                } catch (ExecutionException e) {
                    // not known yet
                }
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("topic " + topic + " has no leaders");
                }
                Thread.sleep(100);
            }
        }
    }

    private Properties producerProps() {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 20000);
        props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, 10000);
        props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 20000);
        props.put(ProducerConfig.LINGER_MS_CONFIG, 5);
        return props;
    }

    private KafkaProducer<String, String> plain() {
        return new KafkaProducer<>(producerProps());
    }

    private KafkaProducer<String, String> transactional(String id) {
        Properties props = producerProps();
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, id);
        props.put(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG, 30000);
        return new KafkaProducer<>(props);
    }

    private Properties consumerProps(String group, String isolation) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, 100);
        props.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 20000);
        props.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, 10000);
        if (group != null) {
            props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        }
        return props;
    }

    private KafkaConsumer<String, String> consumer(String group, String isolation) {
        return new KafkaConsumer<>(consumerProps(group, isolation));
    }

    /** A subscribing group member (classic protocol), read_committed. */
    private KafkaConsumer<String, String> groupConsumer(String group) {
        Properties props = consumerProps(group, "read_committed");
        props.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 10);
        return new KafkaConsumer<>(props);
    }

    // ------------------------------------------------------------ reading

    private static List<TopicPartition> partitions(String topic, int count) {
        return IntStream.range(0, count).mapToObj(p -> new TopicPartition(topic, p)).toList();
    }

    private static Map<String, Long> endOffsets(KafkaConsumer<String, String> consumer,
                                                List<TopicPartition> partitions) {
        Map<TopicPartition, Long> ends = consumer.endOffsets(partitions, TIMEOUT);
        Map<String, Long> out = new LinkedHashMap<>();
        for (TopicPartition tp : partitions) {
            out.put(Integer.toString(tp.partition()), ends.get(tp));
        }
        return out;
    }

    /** Every value from the start up to endOffsets (for this consumer's isolation), by partition. */
    private static Map<String, List<String>> readToEnd(KafkaConsumer<String, String> consumer,
                                                       List<TopicPartition> partitions) {
        Map<TopicPartition, Long> ends = consumer.endOffsets(partitions, TIMEOUT);
        consumer.assign(partitions);
        consumer.seekToBeginning(partitions);
        Map<String, List<String>> out = new LinkedHashMap<>();
        for (TopicPartition tp : partitions) {
            out.put(Integer.toString(tp.partition()), new ArrayList<>());
        }
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (!reached(consumer, ends)) {
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("did not reach " + ends);
            }
            for (ConsumerRecord<String, String> r : consumer.poll(POLL)) {
                out.get(Integer.toString(r.partition())).add(r.value());
            }
        }
        return out;
    }

    private static boolean reached(KafkaConsumer<String, String> consumer, Map<TopicPartition, Long> ends) {
        for (Map.Entry<TopicPartition, Long> end : ends.entrySet()) {
            if (consumer.position(end.getKey(), TIMEOUT) < end.getValue()) {
                return false;
            }
        }
        return true;
    }

    private static List<ConsumerRecord<String, String>> pollCount(KafkaConsumer<String, String> consumer,
                                                                  int count) {
        List<ConsumerRecord<String, String>> out = new ArrayList<>();
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (out.size() < count) {
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("read " + out.size() + " of " + count);
            }
            ConsumerRecords<String, String> records = consumer.poll(POLL);
            for (ConsumerRecord<String, String> r : records) {
                if (out.size() < count) {
                    out.add(r);
                }
            }
        }
        return out;
    }

    /** The group's committed offset of `tp` as this consumer sees it (null: none). */
    private static Long committedOffset(KafkaConsumer<String, String> consumer, TopicPartition tp) {
        return committedOffset(consumer, tp, TIMEOUT);
    }

    private static Long committedOffset(KafkaConsumer<String, String> consumer, TopicPartition tp,
                                        Duration timeout) {
        OffsetAndMetadata committed = consumer.committed(Set.of(tp), timeout).get(tp);
        return committed == null ? null : committed.offset();
    }

    /** The group's committed offset of `tp` through Admin (require_stable false; null: none). */
    private Long adminCommittedOffset(String group, TopicPartition tp) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            OffsetAndMetadata committed = admin.listConsumerGroupOffsets(group)
                    .partitionsToOffsetAndMetadata()
                    .get(20, TimeUnit.SECONDS)
                    .get(tp);
            return committed == null ? null : committed.offset();
        }
    }

    // ------------------------------------------------------------ JSON out

    @SuppressWarnings("unchecked")
    private static String json(Object value) {
        if (value == null) {
            return "null";
        }
        if (value instanceof Number || value instanceof Boolean) {
            return value.toString();
        }
        if (value instanceof Map<?, ?> map) {
            return map.entrySet().stream()
                    .map(e -> json(e.getKey().toString()) + ":" + json(e.getValue()))
                    .collect(Collectors.joining(",", "{", "}"));
        }
        if (value instanceof Collection<?> list) {
            return list.stream().map(TxnClient::json).collect(Collectors.joining(",", "[", "]"));
        }
        StringBuilder out = new StringBuilder("\"");
        for (char c : value.toString().toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }
}
