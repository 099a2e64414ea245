// Transactional produce throughput with the Java client: one producer,
// `perTxn` records of `recordBytes` per transaction, each committed, for
// `seconds`; prints one line "records=<n> seconds=<s> records_per_s=<r>
// txns=<t> commit_p50_ms=<a> commit_p99_ms=<b>". Usage:
//   TxnProduce <bootstrap> <topic> <recordBytes> <perTxn> <seconds> [key=value producer configs...]
// The producer runs at the client's defaults (batch.size 16 KiB, linger.ms 5
// in 4.x, acks=all, idempotence on) unless configs are given.
package kafki.bench;

import java.util.Arrays;
import java.util.Properties;
import java.util.UUID;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class TxnProduce {
    public static void main(String[] args) {
        if (args.length < 5) {
            System.err.println("usage: TxnProduce <bootstrap> <topic> <recordBytes> <perTxn> <seconds> [k=v ...]");
            System.exit(2);
        }
        String topic = args[1];
        int recordBytes = Integer.parseInt(args[2]);
        int perTxn = Integer.parseInt(args[3]);
        long seconds = Long.parseLong(args[4]);
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "txn-bench-" + UUID.randomUUID());
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        for (int i = 5; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            props.put(kv[0], kv[1]);
        }
        byte[] value = new byte[recordBytes];
        Arrays.fill(value, (byte) 'x');
        long[] commitNanos = new long[1 << 20];
        int txns = 0;
        long records = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            producer.initTransactions();
            long start = System.nanoTime();
            long end = start + seconds * 1_000_000_000L;
            while (System.nanoTime() < end) {
                producer.beginTransaction();
                for (int i = 0; i < perTxn; i++) {
                    producer.send(new ProducerRecord<>(topic, value));
                }
                long before = System.nanoTime();
                producer.commitTransaction();
                if (txns < commitNanos.length) {
                    commitNanos[txns] = System.nanoTime() - before;
                }
                txns++;
                records += perTxn;
            }
            double elapsed = (System.nanoTime() - start) / 1e9;
            long[] sorted = Arrays.copyOf(commitNanos, Math.min(txns, commitNanos.length));
            Arrays.sort(sorted);
            double p50 = sorted.length == 0 ? 0 : sorted[sorted.length / 2] / 1e6;
            double p99 = sorted.length == 0 ? 0 : sorted[(int) (sorted.length * 0.99)] / 1e6;
            System.out.printf("records=%d seconds=%.2f records_per_s=%.0f txns=%d commit_p50_ms=%.2f commit_p99_ms=%.2f%n",
                    records, elapsed, records / elapsed, txns, p50, p99);
        }
    }
}
