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
    var hash: UInt32 = 2_166_136_261  // FNV-1a
    for byte in exact.utf8 {
        hash ^= UInt32(byte)
        hash = hash &* 16_777_619
    }
    return safe + "-" + String(hash, radix: 16)
}

/// The name of a job attempt's isolation contexts (work folder, cgroup): from its stream entry id, unique per
/// delivery and safe in a path, with a readable prefix of the job id.
func isolationContextName(jobId: String, streamId: String) -> String {
    let readable = jobId.unicodeScalars.prefix(40).map { scalar -> Character in
        let c = Character(scalar)
        return (c.isASCII && (c.isLetter || c.isNumber)) || c == "-" || c == "_" ? c : "_"
    }
    return "job-\(streamId)-\(String(readable))"
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
