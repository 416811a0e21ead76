import Foundation
import RedisClient
import TestSupport
import XCTest

/// The config file, profiles and log formats as the built binary uses them.
final class ConfigurationFileTests: IntegrationTestCase {
    private let files = TemporaryFiles()

    override func tearDown() {
        files.removeAll()
        super.tearDown()
    }

    private func configFile(_ text: String) throws -> String { try files.write(text) }

    func testConfigPrintAndAConfigErrorFromTheBinary() throws {
        let path = try configFile("{\n  \"queue\": [\"high\", \"default\"],\n  \"concurrency\": 3\n}")
        var result = runCLI(["config", "--print", "--config", path], environment: [:])
        XCTAssertEqual(result.code, 0, result.err)
        let rows = result.stdout.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        XCTAssertTrue(rows.contains(["queue", "high,default", "file:\(path):2"]), result.stdout)
        XCTAssertTrue(rows.contains(["concurrency", "3", "file:\(path):3"]), result.stdout)
        XCTAssertTrue(rows.contains(["lease-ttl", "15s", "default"]), result.stdout)

        let bad = try configFile("{\n  \"queue\": [\"high\"],\n  \"shutdown-timout\": \"45s\"\n}")
        result = runCLI(["config", "--print"], environment: ["RUNNER_CONFIG": bad])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(result.stdout, "")
        XCTAssertEqual(
            result.err, "Error: \(bad):3: unknown key \"shutdown-timout\" (did you mean \"shutdown-timeout\"?)\n")
    }

    /// The built worker refuses a default limit outside a job spec's range before it connects (Redis at port 1 is
    /// never reached): one `Error:` line naming the option, the range in its units, exit 2.
    func testTheBinaryRefusesAWorkerLimitOutOfRange() throws {
        let result = runCLI(
            ["--redis", "127.0.0.1:1", "--name", "range-x", "--isolation", "cgroup", "--default-cpu", "5"],
            environment: [:], timeout: 30)
        XCTAssertEqual(result.code, 2, result.err)
        XCTAssertEqual(result.stdout, "")
        XCTAssertEqual(
            result.err,
            "Error: invalid value for '--default-cpu': '5' is below 10 (from 10 to 1000000 millicores)\n"
                + "See 'runner worker --help'.\n")
    }

    func testAWorkerStartedWithAConfigFileUsesIt() throws {
        let path = try configFile(
            """
            {
              "profile": "development",
              "queue": ["cfg-high", "cfg-low"],
              "concurrency": 3,
              "node": "node-from-file",
              "log-format": "json"
            }
            """)
        // The environment beats the file: the node comes from RUNNER_NODE.
        try startRunner(["--config", path], environment: ["RUNNER_NODE": "node-from-env"])
        let record = try send(["HGET", key("runners"), "r1"]).bytes ?? []
        let object = try JSONSerialization.jsonObject(with: Data(record)) as? [String: Any]
        XCTAssertEqual(object?["capacity"] as? Int, 3)
        XCTAssertEqual(object?["queues"] as? [String], ["cfg-high", "cfg-low"])
        XCTAssertEqual(object?["node"] as? String, "node-from-env")

        // The file's queue is read, and the development profile's debug lines follow the job through as JSON.
        try submit(["--queue", "cfg-low", "--", "true"], id: "cfg-job")
        _ = try waitForState("cfg-job", ["succeeded"])
        let runner = runners[0]
        var lines: [[String: String]] = []
        let logged = waitUntil(timeout: .seconds(10)) {
            lines = runner.log.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
            }
            return lines.contains { $0["msg"] == "job succeeded" && $0["job"] == "cfg-job" }
        }
        XCTAssertTrue(logged, runner.log)
        // Every line is a JSON object with the four keys.
        XCTAssertEqual(lines.count, runner.log.split(separator: "\n").count, runner.log)
        for line in lines {
            XCTAssertNotNil(line["ts"], "\(line)")
            XCTAssertEqual(line["logger"], "runner", "\(line)")
            XCTAssertNotNil(line["msg"], "\(line)")
            XCTAssertTrue(["debug", "info", "warning", "error"].contains(line["level"] ?? ""), "\(line)")
        }
        let jobLines = lines.filter { $0["job"] == "cfg-job" }.map { $0["msg"] ?? "" }
        XCTAssertEqual(jobLines, ["job received", "job claimed", "job started", "job succeeded"], runner.log)
        XCTAssertEqual(lines.first { $0["msg"] == "job received" }?["queue"], "cfg-low")
        XCTAssertEqual(lines.first { $0["msg"] == "job received" }?["level"], "debug")
    }
}
