import Foundation
import RunnerProtocol
import XCTest

/// docs/schema/ and the code must name the same event types, fields and values: one schema per event type, and
/// each record's schema names exactly the fields RunnerProtocol defines. (What the runner really writes is validated
/// against these schemas by the integration test `ProtocolSchemaValidationTests`.)
final class ProtocolSchemaTests: XCTestCase {
    private static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("docs/schema")

    private func schema(_ path: String) throws -> [String: Any] {
        let url = Self.directory.appendingPathComponent(path)
        let data = try Data(contentsOf: url)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(path) is no object")
    }

    private func properties(_ path: String) throws -> Set<String> {
        Set((try schema(path)["properties"] as? [String: Any] ?? [:]).keys)
    }

    private func definition(_ name: String) throws -> [String: Any] {
        let defs = try XCTUnwrap(try schema("common.schema.json")["$defs"] as? [String: Any])
        return try XCTUnwrap(defs[name] as? [String: Any], "common.schema.json has no $defs/\(name)")
    }

    func testEveryEventTypeHasASchemaAndEverySchemaAnEventType() throws {
        let files = try FileManager.default.contentsOfDirectory(
            atPath: Self.directory.appendingPathComponent("events").path)
        let documented = Set(files.filter { $0.hasSuffix(".json") }.map { String($0.dropLast(".json".count)) })
        let known = Set(EventType.allCases.map(\.rawValue))
        XCTAssertEqual(
            known.subtracting(documented).sorted(), [],
            "event types in RunnerProtocol without a schema docs/schema/events/<type>.json")
        XCTAssertEqual(documented.subtracting(known).sorted(), [], "schemas in docs/schema/events/ of no event type")
        for type in documented.intersection(known) {
            let object = try schema("events/\(type).json")
            XCTAssertEqual(object["$id"] as? String, "https://schemas.nativerunner.invalid/v1/events/\(type).json")
            XCTAssertEqual(object["type"] as? String, "object", type)
        }
    }

    func testRecordSchemasNameExactlyTheProtocolFields() throws {
        let cases: [(String, [String])] = [
            ("job-entry.schema.json", JobEntryField.all),
            ("event.schema.json", EventField.all),
            ("heartbeat.schema.json", HeartbeatField.all),
            ("result.schema.json", ResultField.all),
            ("runner-record.schema.json", RunnerRecordField.all),
            ("log-entry.schema.json", LogField.all),
            ("job-spec.schema.json", JobSpec.Key.all),
        ]
        for (file, fields) in cases {
            XCTAssertEqual(try properties(file), Set(fields), file)
        }
        let dead = try properties("dead-letter.schema.json")
        XCTAssertTrue(dead.isSuperset(of: DeadLetterField.all + [ProtocolVersion.field]), "dead-letter.schema.json")
    }

    func testEnumerationsMatchTheCode() throws {
        func values(_ name: String) throws -> Set<String> { Set(try definition(name)["enum"] as? [String] ?? []) }
        XCTAssertEqual(try values("jobState"), Set(JobState.allCases.map(\.rawValue)))
        XCTAssertEqual(try values("runnerState"), Set(RunnerState.allCases.map(\.rawValue)))
        XCTAssertEqual(try values("isolationLevel"), Set(IsolationLevel.allCases.map(\.rawValue)))
        XCTAssertEqual(try values("network"), Set(NetworkMode.allCases.map(\.rawValue)))
        XCTAssertEqual(try definition("version")["const"] as? String, String(ProtocolVersion.current))
        let limits = try XCTUnwrap(try definition("limits")["properties"] as? [String: Any])
        XCTAssertEqual(Set(limits.keys), Set(JobLimits.Key.all))
        let spec = try XCTUnwrap(try schema("job-spec.schema.json")["properties"] as? [String: Any])
        let backoff = try XCTUnwrap((spec["backoff"] as? [String: Any])?["properties"] as? [String: Any])
        XCTAssertEqual(Set(backoff.keys), Set(Backoff.Key.all))
        let jitter = (backoff["jitter"] as? [String: Any])?["enum"] as? [String] ?? []
        XCTAssertEqual(Set(jitter), Set(Backoff.Jitter.allCases.map(\.rawValue)))
        let specLimits = try XCTUnwrap((spec["limits"] as? [String: Any])?["properties"] as? [String: Any])
        XCTAssertEqual(Set(specLimits.keys), Set(JobLimits.Key.all))
    }

    func testEverySchemaIsDraft2020WithAnIdMatchingItsPath() throws {
        let files = try XCTUnwrap(FileManager.default.enumerator(atPath: Self.directory.path)).compactMap {
            $0 as? String
        }
        .filter { $0.hasSuffix(".json") }
        XCTAssertGreaterThan(files.count, EventType.allCases.count)
        for file in files {
            let object = try schema(file)
            XCTAssertEqual(object["$schema"] as? String, "https://json-schema.org/draft/2020-12/schema", file)
            XCTAssertEqual(object["$id"] as? String, "https://schemas.nativerunner.invalid/v1/\(file)", file)
        }
    }
}
