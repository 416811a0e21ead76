import Foundation
import XCTest

/// deploy/: the systemd units pass `systemd-analyze verify` and keep the shutdown settings the runner needs, the
/// Kubernetes manifests refer to each other consistently, and the Dockerfile's stages and paths hold together
/// (docker cannot run here: that one is a structural check, not a build).
final class DeploymentFilesTests: XCTestCase {
    private let deploy = Python.root.appendingPathComponent("deploy")

    private func read(_ path: String) throws -> String {
        try String(contentsOf: deploy.appendingPathComponent(path), encoding: .utf8)
    }

    /// `Key=value` lines of a unit's [Service] section (the last one wins, as in systemd).
    private func serviceSettings(_ unit: String) -> [String: String] {
        var settings: [String: String] = [:]
        var inService = false
        for line in unit.split(separator: "\n").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if line.hasPrefix("[") { inService = line == "[Service]" }
            guard inService, !line.hasPrefix("#"), let equals = line.firstIndex(of: "=") else { continue }
            settings[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return settings
    }

    /// Seconds of a duration as systemd and the runner write them (`45s`, `2m`, `500ms`, a bare number).
    private func seconds(_ text: String) -> Double? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)) { return value * factor }
        }
        return Double(text)
    }

    /// The value following `flag` in an argument list.
    private func option(_ flag: String, in arguments: [String]) -> String? {
        arguments.firstIndex(of: flag).flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
    }

    func testSystemdUnitsVerifyAndStopAfterTheShutdownTimeout() throws {
        let analyze = "/usr/bin/systemd-analyze"
        guard FileManager.default.isExecutableFile(atPath: analyze) else {
            throw XCTSkip("systemd-analyze is not installed at \(analyze): the units were not verified")
        }
        // verify wants the ExecStart binary to exist: copies of the units that run the built one.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("units-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var copies: [String] = []
        for name in ["nativerunner-worker.service", "nativerunner-control.service"] {
            let unit = try read("systemd/" + name).replacingOccurrences(
                of: "ExecStart=/usr/local/bin/runner ", with: "ExecStart=\(Binaries.runner) ")
            XCTAssertTrue(unit.contains("ExecStart=\(Binaries.runner) "), "\(name) runs /usr/local/bin/runner")
            let copy = directory.appendingPathComponent(name)
            try unit.write(to: copy, atomically: true, encoding: .utf8)
            copies.append(copy.path)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: analyze)
        process.arguments = ["verify"] + copies
        let verified = runToEnd(process, timeout: 60)
        XCTAssertEqual(verified.code, 0, verified.err)
        XCTAssertEqual(verified.err + verified.stdout, "", "systemd-analyze verify has something to say")

        let worker = serviceSettings(try read("systemd/nativerunner-worker.service"))
        XCTAssertEqual(worker["Delegate"], "yes")
        XCTAssertEqual(worker["KillMode"], "mixed")
        XCTAssertEqual(worker["KillSignal"], "SIGTERM")
        XCTAssertEqual(worker["Restart"], "on-failure")
        // Redis down at boot (exit 1) is retried however long it lasts; a configuration error (exit 2) is not.
        XCTAssertEqual(worker["RestartPreventExitStatus"], "2")
        // No option in ExecStart: a flag would win over the RUNNER_* settings of worker.env (and a profile's).
        XCTAssertEqual(worker["ExecStart"], "/usr/local/bin/runner worker")
        XCTAssertEqual(worker["Environment"], "RUNNER_NAME=%H RUNNER_WORK_ROOT=/var/lib/nativerunner/work")
        let arguments = ["worker"]
        let stop = try XCTUnwrap(worker["TimeoutStopSec"].flatMap(seconds))
        for profile in [nil, "development", "production", "high-performance"] {
            let printed = runCLI(["config", "--print"] + (profile.map { ["--profile", $0] } ?? []), environment: [:])
            XCTAssertEqual(printed.code, 0, printed.err)
            let rows = Dictionary(
                printed.stdout.split(separator: "\n").compactMap { row -> (String, String)? in
                    let columns = row.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
                    return columns.count >= 2 ? (columns[0], columns[1]) : nil
                }, uniquingKeysWith: { first, _ in first })
            let shutdown = try XCTUnwrap(rows["shutdown-timeout"].flatMap(seconds), printed.stdout)
            let grace = try XCTUnwrap(rows["kill-grace"].flatMap(seconds), printed.stdout)
            XCTAssertGreaterThan(
                stop, shutdown + grace,
                "TimeoutStopSec must outlast the shutdown timeout and kill grace of profile \(profile ?? "none")")
        }
        for breaking in ["PrivateUsers", "ProtectKernelTunables", "ProtectControlGroups", "RestrictNamespaces"] {
            XCTAssertNil(worker[breaking], "\(breaking) breaks the worker's namespaces or cgroups")
        }
        // The worker's options in ExecStart are ones the runner accepts: not a usage error (exit 2) but the
        // Redis that is not there (exit 1).
        let run = runCLI(Array(arguments.dropFirst()) + ["--redis", "127.0.0.1:1"], timeout: 30)
        XCTAssertEqual(run.code, 1, run.err)
        XCTAssertTrue(run.err.contains("cannot reach Redis"), run.err)

        let control = serviceSettings(try read("systemd/nativerunner-control.service"))
        XCTAssertEqual(control["Restart"], "on-failure")
        XCTAssertEqual(control["RestartPreventExitStatus"], "2")
        for unit in ["worker", "control"] {
            let text = try read("systemd/nativerunner-\(unit).service")
            XCTAssertTrue(
                text.contains("\nStartLimitIntervalSec=0\n"), "\(unit): a start limit gives up on a Redis outage")
        }
        XCTAssertEqual(control["KillSignal"], "SIGTERM")
        XCTAssertEqual(control["ExecStart"], "/usr/local/bin/runner control")
    }

    func testKubernetesManifestsReferToEachOther() throws {
        guard Python.require(["yaml"]) else { return }
        let files = ["redis.yaml", "runner.yaml", "control-plane.yaml", "kustomization.yaml"].map {
            deploy.appendingPathComponent("kubernetes/" + $0).path
        }
        let parsed = Python.run(
            [
                "-c",
                "import json, sys, yaml; print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]))",
            ] + files, timeout: 60)
        XCTAssertEqual(parsed.code, 0, parsed.err)
        let documents = try XCTUnwrap(try JSONSerialization.jsonObject(with: parsed.out) as? [[String: Any]])
        func object(_ kind: String, _ name: String) throws -> [String: Any] {
            try XCTUnwrap(
                documents.first {
                    $0["kind"] as? String == kind && (($0["metadata"] as? [String: Any])?["name"] as? String) == name
                },
                "no \(kind) \(name)")
        }
        func dig(_ value: Any?, _ path: String...) -> Any? {
            path.reduce(value) { current, key in
                if let index = Int(key) {
                    return (current as? [Any]).flatMap { $0.indices.contains(index) ? $0[index] : nil }
                }
                return (current as? [String: Any])?[key]
            }
        }
        // kustomization names every manifest.
        let kustomization = try XCTUnwrap(documents.first { $0["resources"] != nil })
        XCTAssertEqual(kustomization["resources"] as? [String], ["redis.yaml", "runner.yaml", "control-plane.yaml"])

        let deployments = documents.filter { $0["kind"] as? String == "Deployment" }
        XCTAssertEqual(deployments.count, 3)
        for deployment in deployments {
            let selector = dig(deployment, "spec", "selector", "matchLabels") as? [String: String]
            let labels = dig(deployment, "spec", "template", "metadata", "labels") as? [String: String]
            XCTAssertNotNil(selector)
            XCTAssertEqual(selector, labels, "a Deployment's selector matches its pods")
            for container in dig(deployment, "spec", "template", "spec", "containers") as? [Any] ?? [] {
                XCTAssertNotNil(dig(container, "resources", "requests"), "resources of \(container)")
            }
        }

        // The runner: probes on the metrics port it listens on, grace above the shutdown, privileged for isolation.
        let runner = try object("Deployment", "nativerunner-worker")
        let pod = try XCTUnwrap(dig(runner, "spec", "template", "spec") as? [String: Any])
        let container = try XCTUnwrap(dig(pod, "containers", "0") as? [String: Any])
        let arguments = try XCTUnwrap(container["args"] as? [String])
        XCTAssertEqual(arguments.first, "worker")
        let listen = try XCTUnwrap(option("--metrics-listen", in: arguments))
        let port = try XCTUnwrap(Int(listen.split(separator: ":").last ?? ""))
        XCTAssertEqual(listen, "0.0.0.0:\(port)", "the probes come from outside the pod")
        let ports = container["ports"] as? [[String: Any]] ?? []
        let metrics = try XCTUnwrap(ports.first { $0["containerPort"] as? Int == port }, "no containerPort \(port)")
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            XCTAssertEqual(dig(container, probe, "httpGet", "path") as? String, path, probe)
            let probed = dig(container, probe, "httpGet", "port")
            XCTAssertTrue(
                probed as? String == metrics["name"] as? String || probed as? Int == port,
                "\(probe) port \(String(describing: probed))")
        }
        let shutdown = try XCTUnwrap(option("--shutdown-timeout", in: arguments).flatMap(seconds))
        let grace = try XCTUnwrap(option("--kill-grace", in: arguments).flatMap(seconds))
        let termination = try XCTUnwrap(pod["terminationGracePeriodSeconds"] as? Int)
        XCTAssertGreaterThan(Double(termination), shutdown + grace, "the kubelet would SIGKILL mid-shutdown")
        XCTAssertLessThanOrEqual(Double(termination), shutdown + grace + 30, "grace far above the shutdown timeout")
        XCTAssertEqual(dig(container, "securityContext", "privileged") as? Bool, true)

        // Every RUNNER_REDIS comes from the Secret; the Secret's documented URL names the Redis Service and port.
        let service = try object("Service", "nativerunner-redis")
        let servicePort = try XCTUnwrap(dig(service, "spec", "ports", "0", "port") as? Int)
        XCTAssertTrue(try read("kubernetes/runner.yaml").contains("url=redis://nativerunner-redis:\(servicePort)"))
        for deployment in [runner, try object("Deployment", "nativerunner-control")] {
            let env = dig(deployment, "spec", "template", "spec", "containers", "0", "env") as? [[String: Any]] ?? []
            let redis = env.first { $0["name"] as? String == "RUNNER_REDIS" }
            XCTAssertEqual(dig(redis, "valueFrom", "secretKeyRef", "name") as? String, "nativerunner-redis")
        }
        let control = try object("Deployment", "nativerunner-control")
        XCTAssertEqual(
            (dig(control, "spec", "template", "spec", "containers", "0", "args") as? [String])?.first, "control")

        // Redis: the Service reaches the container's port, AOF on, never evicting.
        let redis = try object("Deployment", "nativerunner-redis")
        XCTAssertEqual(
            dig(service, "spec", "selector") as? [String: String],
            dig(redis, "spec", "template", "metadata", "labels") as? [String: String])
        let redisContainer = try XCTUnwrap(dig(redis, "spec", "template", "spec", "containers", "0"))
        let target = dig(service, "spec", "ports", "0", "targetPort") as? String
        let redisPorts = dig(redisContainer, "ports") as? [[String: Any]] ?? []
        XCTAssertTrue(redisPorts.contains { $0["name"] as? String == target && $0["containerPort"] as? Int == 6379 })
        let redisArguments = try XCTUnwrap(dig(redisContainer, "args") as? [String])
        XCTAssertEqual(option("--appendonly", in: redisArguments), "yes")
        XCTAssertEqual(option("--maxmemory-policy", in: redisArguments), "noeviction")
    }

    func testDockerfileStagesAndPathsHoldTogether() throws {
        let dockerfile = try read("docker/Dockerfile")
        let lines = dockerfile.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
        let stages = lines.filter { $0.hasPrefix("FROM ") }
        XCTAssertEqual(stages.count, 2, "a build stage and a runtime stage")
        XCTAssertTrue(stages.first?.hasPrefix("FROM swift:6") == true && stages.first?.hasSuffix(" AS build") == true)
        XCTAssertTrue(stages.last?.contains("-slim") == true, "the runtime is a slim image")
        let runtime = dockerfile.components(separatedBy: stages.last ?? "").last ?? ""
        XCTAssertTrue(dockerfile.components(separatedBy: stages.last ?? "").first?.contains("libhiredis-dev") == true)
        XCTAssertTrue(runtime.contains("libhiredis"), "the runtime installs libhiredis")
        // What the build stage copies exists in the repository, and the binary travels to where it is run.
        for copy in lines where copy.hasPrefix("COPY ") && !copy.contains("--from=") {
            let source = copy.split(separator: " ")[1]
            XCTAssertTrue(
                FileManager.default.fileExists(atPath: Python.root.appendingPathComponent(String(source)).path), copy)
        }
        let fromBuild = try XCTUnwrap(lines.first { $0.hasPrefix("COPY --from=build ") }).split(separator: " ")
        XCTAssertTrue(dockerfile.contains("/out/runner"), "the build stage installs the binary at /out/runner")
        XCTAssertEqual(fromBuild[2], "/out/runner")
        XCTAssertTrue(lines.contains("ENTRYPOINT [\"\(fromBuild[3])\"]"), "ENTRYPOINT runs the copied binary")
        XCTAssertTrue(lines.contains("EXPOSE 9464"))
        XCTAssertTrue(lines.contains("STOPSIGNAL SIGTERM"))
        let ignored = try String(contentsOf: Python.root.appendingPathComponent(".dockerignore"), encoding: .utf8)
        XCTAssertTrue(ignored.split(separator: "\n").contains(".build"), "the build context leaves .build out")
    }
}
