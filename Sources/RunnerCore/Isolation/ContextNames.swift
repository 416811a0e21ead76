import RedisClient

/// The name of a runner's own isolation folder and cgroup parent: its namespace and id, which together name it on a
/// host (two runners of the same id in different namespaces must not share them). Characters that are not safe in
/// a path become `_`, and then a hash of the exact names keeps different runners apart.
func runnerContextName(namespace: String, runner: String, pool: String) -> String {
    // The pool's hash too: a runner of the same name and namespace on another Redis is another runner.
    let exact = "\(namespace).\(runner).\(pool.prefix(8))"
    let safe = String(
        exact.unicodeScalars.prefix(100).map { scalar -> Character in
            let c = Character(scalar)
            return (c.isASCII && (c.isLetter || c.isNumber)) || c == "-" || c == "_" || c == "." ? c : "_"
        })
    guard safe != exact || exact.hasPrefix(".") else { return exact }
    return safe + "-" + String(fnv1a32(exact.utf8), radix: 16)
}

/// The name of a job attempt's isolation contexts (work folder, cgroup), safe in a path:
/// `job-<stream entry id>-<hash>-<readable prefix of the job id>`.
///
/// The entry id alone is unique only within its stream: two queues read by one runner can hold entries of the same
/// id, running at once, whose job ids sanitise alike (`coll.1`, `coll:1`). The hash (8 hex digits of an FNV-1a hash
/// of the queue and the exact job id) tells those apart; the same delivery always gets the same name, so that a
/// crashed run's folder of the entry is recognised. Every name starts with `job-`, what cleanup of a dead runner's
/// contexts matches.
func isolationContextName(jobId: String, delivery: DeliveryKey) -> String {
    let readable = jobId.unicodeScalars.prefix(40).map { scalar -> Character in
        let c = Character(scalar)
        return (c.isASCII && (c.isLetter || c.isNumber)) || c == "-" || c == "_" ? c : "_"
    }
    // A job id never holds a NUL (control characters are refused): queue and job id cannot run into each other.
    let hex = String(fnv1a32((delivery.queue + "\u{0}" + jobId).utf8), radix: 16)
    let hash = String(repeating: "0", count: 8 - hex.count) + hex
    return "job-\(delivery.streamId)-\(hash)-\(String(readable))"
}

/// The 32-bit FNV-1a hash of some bytes: short, stable across runs and builds (unlike `Hasher`).
private func fnv1a32(_ bytes: some Sequence<UInt8>) -> UInt32 {
    var hash: UInt32 = 2_166_136_261
    for byte in bytes {
        hash ^= UInt32(byte)
        hash = hash &* 16_777_619
    }
    return hash
}

/// The stream entry id inside a name made by `isolationContextName`, nil for anything else.
func streamId(inContextName name: String) -> String? {
    guard name.hasPrefix("job-") else { return nil }
    let parts = name.dropFirst(4).split(separator: "-", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, parts[0].allSatisfy(\.isNumber), !parts[0].isEmpty, parts[1].allSatisfy(\.isNumber),
        !parts[1].isEmpty
    else { return nil }
    return "\(parts[0])-\(parts[1])"
}

/// A pool's identity for `NR_POOL`: an FNV-1a hash of the Redis host, port and database, so that a job never
/// learns the address but two pools on one host are told apart.
func poolIdentity(_ redis: RedisEndpoint) -> String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in "\(redis.host):\(redis.port)/\(redis.database)".utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    let hex = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}
