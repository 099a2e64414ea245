// The Flink job of tests/broker/test_flink.py: reads topic <input>
// (read_committed), upper-cases each value and writes it to <output> with
// KafkaSink's EXACTLY_ONCE (one Kafka transaction per checkpoint), in a
// local MiniCluster, checkpointing every second into <checkpoints> and
// keeping checkpoints when killed. Usage:
//   FlinkExactlyOnce <bootstrap> <input> <output> <checkpoints> [<restore-from>]
// <restore-from>: a retained checkpoint (.../chk-N) to resume from.
package kafki.apps;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.serialization.SimpleStringSchema;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.ExternalizedCheckpointRetention;
import org.apache.flink.configuration.StateRecoveryOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

public final class FlinkExactlyOnce {
    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: FlinkExactlyOnce <bootstrap> <input> <output> <checkpoints> [<restore-from>]");
            System.exit(2);
        }
        String bootstrap = args[0];
        Configuration conf = new Configuration();
        conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, "file://" + args[3]);
        conf.set(CheckpointingOptions.EXTERNALIZED_CHECKPOINT_RETENTION,
                ExternalizedCheckpointRetention.RETAIN_ON_CANCELLATION);
        if (args.length > 4) {
            conf.set(StateRecoveryOptions.SAVEPOINT_PATH, args[4]);
        }
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.enableCheckpointing(1000, CheckpointingMode.EXACTLY_ONCE);
        env.setParallelism(2);

        KafkaSource<String> source = KafkaSource.<String>builder()
                .setBootstrapServers(bootstrap)
                .setTopics(args[1])
                .setGroupId("flink-eos")
                .setStartingOffsets(OffsetsInitializer.earliest())
                .setValueOnlyDeserializer(new SimpleStringSchema())
                .setProperty("isolation.level", "read_committed")
                .build();
        KafkaSink<String> sink = KafkaSink.<String>builder()
                .setBootstrapServers(bootstrap)
                .setRecordSerializer(KafkaRecordSerializationSchema.builder()
                        .setTopic(args[2])
                        .setValueSerializationSchema(new SimpleStringSchema())
                        .build())
                .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
                .setTransactionalIdPrefix("kafki-flink-eos")
                .setProperty("transaction.timeout.ms", "60000")
                .build();

        env.fromSource(source, WatermarkStrategy.noWatermarks(), "input")
                .map(String::toUpperCase)
                .sinkTo(sink);
        System.out.println("SUBMITTING");
        System.out.flush();
        env.execute("kafki-exactly-once");
    }
}
