import RunnerProtocol

/// Which stream entry a delivery is: its queue and its entry id.
///
/// An entry id is unique only within its stream: entries added to two queues in the same millisecond (or with the
/// same explicit id) get the same id. Whatever the runner keeps per delivery (its slot, the prefetch buffer, memory
/// admission, the running containments, the reads' skip sets) is keyed by both, so that two such jobs run side by
/// side while one entry delivered twice on the same stream still runs once.
struct DeliveryKey: Hashable, Sendable {
    /// The queue whose stream holds the entry (a requirement stream is a queue of its own here).
    var queue: String
    /// The entry id in that stream.
    var streamId: String
}

extension Delivery {
    var key: DeliveryKey { DeliveryKey(queue: queue, streamId: streamId) }
}

extension JobEntry {
    var deliveryKey: DeliveryKey { DeliveryKey(queue: queue, streamId: streamId) }
}
