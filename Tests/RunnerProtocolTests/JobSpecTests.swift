import RunnerProtocol
import XCTest

final class JobSpecTests: XCTestCase {
    private func spec(_ json: String) throws -> JobSpec { try JobSpec(json: Array(json.utf8)) }

    private func rejection(_ json: String) -> String? {
        do {
            _ = try spec(json)
            return nil
        } catch let error as JobSpecError {
            return error.message
        } catch {
            return "unexpected error \(error)"
        }
    }

    func testFullSpecParses() throws {
        let parsed = try spec(
            #"{"argv":["echo","hi"],"env":{"A":"1"},"cwd":"/tmp","timeout_ms":1500,"max_attempts":3,"labels":{"k":"v"},"future":{"x":1}}"#
        )
        XCTAssertEqual(parsed.command, .argv(["echo", "hi"]))
        XCTAssertEqual(parsed.environment, ["A": "1"])
        XCTAssertEqual(parsed.workingDirectory, "/tmp")
        XCTAssertEqual(parsed.timeoutMs, 1500)
        XCTAssertEqual(parsed.maxAttempts, 3)
        XCTAssertEqual(parsed.labels, ["k": "v"])
    }

    func testShellSpecAndDefaults() throws {
        let parsed = try spec(#"{"shell":"echo $HOME"}"#)
        XCTAssertEqual(parsed.command, .shell("echo $HOME"))
        XCTAssertEqual(parsed.environment, [:])
        XCTAssertNil(parsed.workingDirectory)
        XCTAssertNil(parsed.timeoutMs)
        XCTAssertEqual(parsed.maxAttempts, 1)
    }

    func testRejectionsNameTheProblem() {
        XCTAssertEqual(rejection("not json")?.hasPrefix("spec is not valid JSON"), true)
        XCTAssertEqual(rejection("[1]"), "spec must be a JSON object, got an array")
        XCTAssertEqual(rejection("{}"), #"spec has no command: give "argv" (array of strings) or "shell" (string)"#)
        XCTAssertEqual(rejection(#"{"argv":["a"],"shell":"b"}"#), #"spec has both "argv" and "shell": give one"#)
        XCTAssertEqual(rejection(#"{"argv":"echo hi"}"#), "spec.argv must be an array of strings, got a string")
        XCTAssertEqual(rejection(#"{"argv":["echo",1]}"#), "spec.argv[1] must be a string, got a number")
        XCTAssertEqual(rejection(#"{"argv":[]}"#), "spec.argv is empty")
        XCTAssertEqual(rejection(#"{"shell":5}"#), "spec.shell must be a string, got a number")
        XCTAssertEqual(rejection(#"{"shell":"x","env":{"A":1}}"#), "spec.env.A must be a string, got a number")
        XCTAssertEqual(rejection(#"{"shell":"x","env":["A"]}"#), "spec.env must be an object of strings, got an array")
        XCTAssertEqual(rejection(#"{"shell":"x","env":{"A=B":"1"}}"#), #"spec.env has an invalid variable name "A=B""#)
        XCTAssertEqual(
            rejection(#"{"shell":"x","timeout_ms":-5}"#), "spec.timeout_ms must be a positive integer, got -5")
        XCTAssertEqual(
            rejection(#"{"shell":"x","timeout_ms":1.5}"#), "spec.timeout_ms must be a positive integer, got 1.5")
        XCTAssertEqual(
            rejection(#"{"shell":"x","timeout_ms":"10"}"#), "spec.timeout_ms must be a positive integer, got a string")
        XCTAssertEqual(
            rejection(#"{"shell":"x","max_attempts":0}"#), "spec.max_attempts must be a positive integer, got 0")
        XCTAssertEqual(rejection(#"{"shell":"x","cwd":7}"#), "spec.cwd must be a string, got a number")
        // Parsers elsewhere differ on which of two values wins: neither.
        XCTAssertEqual(
            rejection(#"{"argv":["true"],"argv":["false"]}"#),
            #"spec is not valid JSON: the key "argv" is given twice at byte 17"#)
        XCTAssertEqual(
            rejection(#"{"shell":"x","env":{"A":"1","A":"2"}}"#),
            #"spec is not valid JSON: the key "A" is given twice at byte 28"#)
    }

    /// A byte the JSON cannot start a value with is quoted as `\xFF` when it is no visible character (a byte that
    /// starts no UTF-8 character, a control or format character), not as the Latin-1 letter it would be ('ÿ').
    func testAnUnexpectedByteIsQuotedAsHexUnlessItIsAVisibleCharacter() {
        func rejection(_ bytes: [UInt8]) -> String? {
            do {
                _ = try JobSpec(json: bytes)
                return nil
            } catch { return error.message }
        }
        let argv = Array(#"{"argv":["#.utf8)
        let cases: [([UInt8], String)] = [
            ([0xFF], #"unexpected character '\xFF' at byte 0"#),
            (argv + [0xFE, 0x5D, 0x7D], #"unexpected character '\xFE' at byte 9"#),
            (argv + [0xC3], #"unexpected character '\xC3' at byte 9"#),
            (argv + [0xC3, 0x28], #"unexpected character '\xC3' at byte 9"#),
            (argv + [0xE2, 0x80, 0xAE, 0x5D, 0x7D], #"unexpected character '\xE2\x80\xAE' at byte 9"#),
            ([0x01], #"unexpected character '\x01' at byte 0"#),
            ([0x7F], #"unexpected character '\x7F' at byte 0"#),
            ([0x0B], #"unexpected character '\x0B' at byte 0"#),
            (argv + Array("é]}".utf8), "unexpected character 'é' at byte 9"),
            (argv + Array("😀]}".utf8), "unexpected character '😀' at byte 9"),
            (argv + Array("x]}".utf8), "unexpected character 'x' at byte 9"),
        ]
        for (bytes, expected) in cases {
            XCTAssertEqual(rejection(bytes), "spec is not valid JSON: " + expected, "\(bytes)")
        }
    }

    func testSpecRoundTripsThroughJSON() throws {
        let original = JobSpec(
            command: .argv(["/bin/echo", "quote \" and \\ and \n"]), environment: ["K": "ü"], workingDirectory: "/w",
            timeoutMs: 10, maxAttempts: 2, labels: ["a": "b"])
        XCTAssertEqual(try JobSpec(json: Array(original.json.serialized.utf8)), original)
    }
}

final class JobEntryTests: XCTestCase {
    private func fields(_ pairs: [(String, String)]) -> [(String, [UInt8])] { pairs.map { ($0.0, Array($0.1.utf8)) } }

    func testValidEntry() throws {
        let entry = try JobEntry(
            streamId: "1-1", queue: "default",
            fields: fields([("id", "job-1"), ("spec", #"{"shell":"true"}"#), ("attempt", "2")]))
        XCTAssertEqual(entry.jobId, "job-1")
        XCTAssertEqual(entry.attempt, 2)
        XCTAssertEqual(entry.spec.command, .shell("true"))
    }

    func testMissingFields() {
        XCTAssertThrowsError(try JobEntry(streamId: "1-1", queue: "q", fields: fields([("spec", "{}")]))) {
            XCTAssertEqual(($0 as? JobSpecError)?.message, #"entry has no "id" field"#)
        }
        XCTAssertThrowsError(try JobEntry(streamId: "1-1", queue: "q", fields: fields([("id", "a")]))) {
            XCTAssertEqual(($0 as? JobSpecError)?.message, #"entry has no "spec" field"#)
        }
        XCTAssertThrowsError(
            try JobEntry(streamId: "1-1", queue: "q", fields: fields([("id", "a b"), ("spec", #"{"shell":"x"}"#)]))
        ) {
            XCTAssertEqual(($0 as? JobSpecError)?.message, #"job id "a b" contains white space or control characters"#)
        }
        XCTAssertThrowsError(
            try JobEntry(
                streamId: "1-1", queue: "q",
                fields: fields([("id", "a"), ("spec", #"{"shell":"x"}"#), ("attempt", "0")]))
        ) {
            XCTAssertEqual(($0 as? JobSpecError)?.message, #"entry field "attempt" must be a positive integer"#)
        }
        XCTAssertThrowsError(
            try JobEntry(
                streamId: "1-1", queue: "q", fields: fields([("id", "a"), ("id", "b"), ("spec", #"{"shell":"x"}"#)]))
        ) {
            XCTAssertEqual(($0 as? JobSpecError)?.message, #"entry has the field "id" more than once"#)
        }
        // An attempt of 10^14 or more was raised by the job scripts into exponent form (`1e+14`), and the job was
        // rejected after its first failure for its own next entry; such an entry is refused when read (breaker16).
        XCTAssertThrowsError(
            try JobEntry(
                streamId: "1-1", queue: "q",
                fields: fields([("id", "a"), ("spec", #"{"shell":"x"}"#), ("attempt", "99999999999999")]))
        ) {
            XCTAssertEqual(
                ($0 as? JobSpecError)?.message,
                #"entry field "attempt" is 99999999999999, more than the largest attempt, 1000000000"#)
        }
        XCTAssertEqual(
            try JobEntry(
                streamId: "1-1", queue: "q",
                fields: fields([("id", "a"), ("spec", #"{"shell":"x"}"#), ("attempt", "1000000000")])
            ).attempt, 1_000_000_000)
        XCTAssertNil(JobEntry.jobId(in: fields([("spec", "{}")])))
        XCTAssertEqual(JobEntry.jobId(in: fields([("id", "ok-1")])), "ok-1")
    }
}

final class JSONValueTests: XCTestCase {
    func testParsesAndSerialises() throws {
        let value = try JSONValue(parsing: #"{"b":[1,2.5,true,null,"x\u00e9\n"],"a":{"n":-3}}"#)
        XCTAssertEqual(value.serialized, #"{"a":{"n":-3},"b":[1,2.5,true,null,"xé\n"]}"#)
        XCTAssertEqual(value["a"]?["n"]?.intValue, -3)
    }

    func testSurrogatePairsAndErrors() throws {
        XCTAssertEqual(try JSONValue(parsing: #""\ud83d\ude00""#).stringValue, "😀")
        XCTAssertThrowsError(try JSONValue(parsing: #"{"a":1,}"#))
        XCTAssertThrowsError(try JSONValue(parsing: #"{"a":1} x"#))
        XCTAssertThrowsError(try JSONValue(parsing: #""\ud83d""#))
        XCTAssertThrowsError(
            try JSONValue(parsing: String(repeating: "[", count: 100) + String(repeating: "]", count: 100)))
    }

    func testControlCharactersAreEscaped() {
        XCTAssertEqual(JSONValue.string("a\u{1}b\"").serialized, #""a\u0001b\"""#)
        let mixed: JSONValue = ["k\"\u{1f}": "\\\r\t\u{7f}é😀", "": .array([])]
        XCTAssertEqual(mixed.serialized, #"{"":[],"k\"\u001f":"\\\r\t\#u{7f}é😀"}"#)
        XCTAssertEqual(mixed.serializedBytes, Array(mixed.serialized.utf8))
        XCTAssertEqual(try JSONValue(parsing: mixed.serializedBytes), mixed)
    }
}

final class KeyspaceTests: XCTestCase {
    func testKeysShareTheHashTag() {
        let keys = Keyspace(namespace: "pool1")
        let all = [
            keys.jobs(queue: "default"), keys.events, keys.heartbeats, keys.lease(runner: "r1"), keys.runners,
            keys.job(id: "j"), keys.log(job: "j"), keys.dead,
        ]
        XCTAssertEqual(
            all,
            [
                "{pool1}:jobs:default", "{pool1}:events", "{pool1}:heartbeats", "{pool1}:runner:r1", "{pool1}:runners",
                "{pool1}:job:j", "{pool1}:log:j", "{pool1}:dead",
            ])
        XCTAssertTrue(all.allSatisfy { $0.hasPrefix("{pool1}:") })
    }

    func testNameValidation() {
        XCTAssertTrue(Keyspace.isValidName("nr-prod_1.x"))
        XCTAssertFalse(Keyspace.isValidName("a:b"))
        XCTAssertFalse(Keyspace.isValidName("{a}"))
        XCTAssertFalse(Keyspace.isValidName("a b"))
        XCTAssertFalse(Keyspace.isValidName(""))
    }
}

final class IsolationSpecTests: XCTestCase {
    private func rejection(_ json: String) -> String? {
        do {
            _ = try JobSpec(json: Array(json.utf8))
            return nil
        } catch {
            return error.message
        }
    }

    func testIsolationFieldsParseAndRoundTrip() throws {
        let parsed = try JobSpec(
            json: Array(
                #"{"argv":["x"],"isolation":"cgroup","network":"none","limits":{"memory_bytes":67108864,"pids":32,"cpu_millis":500,"cpu_seconds":10,"open_files":64,"file_size_bytes":1024},"secret_env":["A"],"env":{"A":"v"}}"#
                    .utf8))
        XCTAssertEqual(parsed.isolation, .cgroup)
        XCTAssertEqual(parsed.network, NetworkMode.none)
        XCTAssertEqual(
            parsed.limits,
            JobLimits(
                memoryBytes: 64 << 20, pids: 32, cpuMillis: 500, cpuSeconds: 10, openFiles: 64, fileSizeBytes: 1024))
        XCTAssertEqual(parsed.secretEnvironment, ["A"])
        XCTAssertEqual(try JobSpec(json: Array(parsed.json.serialized.utf8)), parsed)
    }

    func testIsolationRejections() {
        XCTAssertEqual(
            rejection(#"{"shell":"x","isolation":"vm"}"#),
            #"spec.isolation must be one of none, process_group, namespace, cgroup, got "vm""#)
        XCTAssertEqual(
            rejection(#"{"shell":"x","network":"none","isolation":"process_group"}"#),
            #"spec.network "none" needs isolation "namespace" or "cgroup", not "process_group""#)
        XCTAssertEqual(
            rejection(#"{"shell":"x","limits":{"memory":5}}"#),
            "spec.limits.memory is not a known limit (memory_bytes, pids, cpu_millis, cpu_seconds, open_files, file_size_bytes)"
        )
        XCTAssertEqual(
            rejection(#"{"shell":"x","limits":{"pids":0}}"#), "spec.limits.pids must be a positive integer, got 0")
        XCTAssertEqual(
            rejection(#"{"shell":"x","limits":[1]}"#),
            "spec.limits must be an object of positive integers, got an array")
        XCTAssertEqual(
            rejection(#"{"shell":"x","secret_env":"A"}"#),
            "spec.secret_env must be an array of variable names, got a string")
        XCTAssertEqual(rejection(#"{"shell":"x","secret_env":[""]}"#), "spec.secret_env[0] is empty")
    }

    func testLevelsAreOrderedAndLimitsMergeAndCap() {
        XCTAssertLessThan(IsolationLevel.none, .processGroup)
        XCTAssertLessThan(IsolationLevel.namespace, .cgroup)
        let merged = JobLimits(memoryBytes: 10).merged(over: JobLimits(memoryBytes: 99, pids: 5))
        XCTAssertEqual(merged, JobLimits(memoryBytes: 10, pids: 5))
        XCTAssertEqual(
            JobLimits(memoryBytes: 10, pids: 50).exceeding(JobLimits(pids: 20)),
            "limits.pids 50 is above this runner's ceiling of 20")
        XCTAssertNil(JobLimits(pids: 20).exceeding(JobLimits(pids: 20)))
    }
}

final class LimitRangeTests: XCTestCase {
    func testLimitsOutsideWhatTheKernelTakesAreRefused() {
        func rejection(_ limits: String) -> String? {
            do {
                _ = try JobSpec(json: Array(#"{"argv":["x"],"limits":\#(limits)}"#.utf8))
                return nil
            } catch { return error.message }
        }
        XCTAssertEqual(
            rejection(#"{"memory_bytes":1}"#),
            "spec.limits.memory_bytes must be between 1048576 and 1125899906842624, got 1")
        XCTAssertEqual(rejection(#"{"cpu_millis":5}"#), "spec.limits.cpu_millis must be between 10 and 1000000, got 5")
        XCTAssertEqual(rejection(#"{"open_files":3}"#), "spec.limits.open_files must be between 8 and 1048576, got 3")
        XCTAssertEqual(
            rejection(#"{"pids":9223372036854775807}"#),
            "spec.limits.pids must be between 1 and 4194304, got 9223372036854775807")
        XCTAssertNil(rejection(#"{"memory_bytes":1048576,"cpu_millis":10,"open_files":8,"pids":4194304}"#))
    }
}
