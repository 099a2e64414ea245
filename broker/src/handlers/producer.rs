//! InitProducerId: a new idempotent producer gets an id from shard 0's
//! allocator ([`crate::producer::ProducerIdAllocator`], cluster-wide
//! blocks on a cluster member);
//! one that has an id gets its epoch bumped (KIP-360). A transactional
//! producer goes to its transaction coordinator ([`super::txn`]).

use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};

use crate::shard::Shard;

/// InitProducerId: with a `transactional_id`, the transaction
/// coordinator's; without one, an idempotent producer's id.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    if let Some(transactional_id) = &request.transactional_id {
        let transactional_id = transactional_id.to_string();
        return super::txn::init_transactional_producer_id(
            shard,
            request,
            version,
            transactional_id,
        )
        .await;
    }
    // A producer that already has an id asks for an epoch bump (KIP-360).
    if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        return InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    let allocated = shard
        .invoke_on(0, |controller| async move {
            match controller.quorum() {
                Some(quorum) => {
                    controller
                        .producer_ids
                        .allocate_in_cluster(
                            &quorum,
                            controller.config.node_id,
                            &controller.config.data_dir,
                        )
                        .await
                }
                None => {
                    controller
                        .producer_ids
                        .allocate(&controller.config.data_dir)
                        .await
                }
            }
        })
        .await;
    match allocated {
        Ok(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Ok(Err(message)) => {
            tracing::error!(%message, "InitProducerId failed");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::KafkaStorageError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
        Err(error) => {
            tracing::error!(%error, "InitProducerId: controller unreachable");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
