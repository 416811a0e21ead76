import RunnerProtocol
import XCTest

/// Labels, requirements, their canonical text and id, and matching.
final class LabelTests: XCTestCase {
    func testTheCanonicalTextSortsByKeyAndTheIdIsFNV1a64OfIt() throws {
        let labels = try LabelSet(pairs: ["zone=eu", "gpu=a100", "Arch=x86_64"])
        XCTAssertEqual(labels.canonical, "Arch=x86_64,gpu=a100,zone=eu")
        XCTAssertEqual(
            try LabelSet(["gpu": "a100", "zone": "eu", "Arch": "x86_64"]).requirementId, labels.requirementId)
        // FNV-1a 64 reference values: the empty text is the offset basis; "a" is the published test vector.
        XCTAssertEqual(LabelSet().requirementId, "cbf29ce484222325")
        XCTAssertEqual(try LabelSet(pairs: ["gpu=yes"]).canonical, "gpu=yes")
        XCTAssertEqual(try LabelSet(pairs: ["gpu=yes"]).requirementId, fnv1a64("gpu=yes"))
        XCTAssertEqual(fnv1a64("a"), "af63dc4c8601ec8c")
        XCTAssertEqual(labels.requirementId.count, 16)
        XCTAssertEqual(
            Keyspace.requirementQueue("high", requirement: labels), "high:req:\(labels.requirementId)")
        XCTAssertEqual(Keyspace.baseQueue(of: "high:req:\(labels.requirementId)"), "high")
        XCTAssertEqual(Keyspace.baseQueue(of: "high"), "high")
    }

    func testARunnerSatisfiesARequirementWhenItHasEveryLabelWithItsValue() throws {
        let runner = try LabelSet(pairs: ["gpu=a100", "zone=eu"])
        XCTAssertTrue(runner.satisfies(LabelSet()))
        XCTAssertTrue(runner.satisfies(try LabelSet(pairs: ["gpu=a100"])))
        XCTAssertTrue(runner.satisfies(try LabelSet(pairs: ["zone=eu", "gpu=a100"])))
        XCTAssertFalse(runner.satisfies(try LabelSet(pairs: ["gpu=h100"])))
        XCTAssertFalse(runner.satisfies(try LabelSet(pairs: ["gpu=a100", "disk=ssd"])))
        XCTAssertFalse(LabelSet().satisfies(try LabelSet(pairs: ["gpu=a100"])))
    }

    func testBadLabelsAreRefusedNamingTheLabel() {
        func message(_ pairs: [String]) -> String? {
            do {
                _ = try LabelSet(pairs: pairs)
                return nil
            } catch {
                return error.message
            }
        }
        XCTAssertEqual(message(["gpu"]), "'gpu' is not KEY=VALUE")
        XCTAssertEqual(message(["=x"]), "label key '' must be 1 to 63 bytes")
        XCTAssertEqual(message(["g pu=x"]), "label key 'g pu' may hold only letters, digits, '.', '_', '-' and '/'")
        XCTAssertEqual(message(["gpu="]), "label 'gpu' must have a value of 1 to 256 bytes")
        XCTAssertEqual(message(["gpu=a,b"]), "label 'gpu' has a value with white space, a control character or ','")
        XCTAssertEqual(message(["gpu=a", "gpu=b"]), "label 'gpu' is given twice")
        XCTAssertNil(message(["k8s.io/arch=arm64", "x=a=b"]))
    }

    func testASpecCarriesRequiresAndRefusesBadOnes() throws {
        let spec = try JobSpec(json: Array(#"{"argv":["true"],"requires":{"gpu":"a100"}}"#.utf8))
        XCTAssertEqual(spec.requires, try LabelSet(["gpu": "a100"]))
        XCTAssertEqual(spec.json.serialized, #"{"argv":["true"],"requires":{"gpu":"a100"}}"#)
        XCTAssertEqual(try JobSpec(json: Array(#"{"argv":["true"]}"#.utf8)).requires, LabelSet())
        func refusal(_ json: String) -> String? {
            do {
                _ = try JobSpec(json: Array(json.utf8))
                return nil
            } catch {
                return error.message
            }
        }
        XCTAssertEqual(
            refusal(#"{"argv":["true"],"requires":{"gpu":1}}"#), "spec.requires.gpu must be a string, got a number")
        XCTAssertEqual(
            refusal(#"{"argv":["true"],"requires":{"gpu":""}}"#),
            "spec.requires: label 'gpu' must have a value of 1 to 256 bytes")
        XCTAssertEqual(
            refusal(#"{"argv":["true"],"requires":["gpu"]}"#),
            "spec.requires must be an object of strings, got an array")
    }

    private func fnv1a64(_ text: String) -> String {
        var hash: UInt64 = 14_695_981_039_346_656_037
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 1_099_511_628_211 }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    func testNamesRefuseControlCharacters() {
        XCTAssertTrue(Keyspace.isValidName("runner-1.eu"))
        XCTAssertFalse(Keyspace.isValidName("a\u{0}b"))
        XCTAssertFalse(Keyspace.isValidName("q\u{1B}[2J"))
        XCTAssertTrue(Keyspace.isValidNodeName("node:a/1"))
        XCTAssertFalse(Keyspace.isValidNodeName(""))
        XCTAssertFalse(Keyspace.isValidNodeName("n\u{1}x"))
        XCTAssertThrowsError(try LabelSet(pairs: (0...LabelSet.maximumCount).map { "k\($0)=v" }))
    }
}
