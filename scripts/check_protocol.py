#!/usr/bin/env python3
"""Validates what a NativeRunner pool holds in Redis against the JSON Schemas in docs/schema/.

    python3 scripts/check_protocol.py --redis HOST:PORT [--namespace NS]

Reads the events stream, the heartbeats, the registry, every result hash, job entry, output stream and dead
letter of the namespace, and checks each against its schema (JSON inside Redis strings too: an event's `data`
against events/<type>.json, a result's `spec` against job-spec.schema.json, ...). It also reports any field a
schema does not name (a write the docs do not describe yet) and any event type without a schema. Prints one JSON
object: {"counts": {kind: validated entries}, "errors": [one line each]}; exits 0 only when there are no errors.
Needs redis and jsonschema from PyPI (scripts/lib.sh: nr_need_python_deps).
"""

import argparse
import json
import pathlib
import sys
import urllib.parse

try:
    import jsonschema
    import redis
    import referencing
except ImportError as error:  # one clear line instead of a traceback
    sys.exit(f"error: {error.name} is not installed (scripts/lib.sh: nr_need_python_deps installs it)")

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs" / "schema"


class Schemas:
    """Every schema file, registered under its $id so that relative $refs resolve without any network."""

    def __init__(self, directory):
        self.by_path = {}
        resources = []
        for path in sorted(directory.rglob("*.json")):
            contents = json.loads(path.read_text())
            relative = path.relative_to(directory).as_posix()
            self.by_path[relative] = contents
            resources.append((contents["$id"], referencing.Resource.from_contents(contents)))
        self.registry = referencing.Registry().with_resources(resources)

    def event_types(self):
        return {name[len("events/") : -len(".json")] for name in self.by_path if name.startswith("events/")}

    def validator(self, schema):
        return jsonschema.Draft202012Validator(schema, registry=self.registry)

    def resolve(self, base_id, ref):
        return self.registry.resolver(base_uri=base_id).lookup(ref)

    def known_properties(self, schema, base_id):
        """Property names a schema names, following $ref and allOf (what a reader is told about)."""
        names = set(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            names |= self.known_properties(part, base_id)
        if "$ref" in schema:
            resolved = self.resolve(base_id, schema["$ref"])
            names |= self.known_properties(resolved.contents, urllib.parse.urljoin(base_id, schema["$ref"]).split("#")[0])
        return names


def text(value):
    """Redis bytes as text; bytes that are not UTF-8 become U+FFFD (the schemas say only "string")."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


class Checker:
    def __init__(self, schemas):
        self.schemas = schemas
        self.counts = {}
        self.errors = []

    def check(self, kind, where, value, schema_path, strict=True):
        """Validates value (and JSON inside its string fields) against a schema; counts it when it is valid."""
        schema = self.schemas.by_path[schema_path]
        problems = [f"{e.json_path}: {e.message}" for e in self.schemas.validator(schema).iter_errors(value)]
        if isinstance(value, dict):
            for name, field_schema in schema.get("properties", {}).items():
                if name not in value or field_schema.get("contentMediaType") != "application/json":
                    continue
                try:
                    embedded = json.loads(value[name])
                except ValueError as error:
                    problems.append(f"${name}: not JSON: {error}")
                    continue
                content = field_schema.get("contentSchema")
                if content is not None:
                    wrapped = {"$ref": f"{schema['$id']}#/properties/{name}/contentSchema"}
                    problems += [
                        f"${name}{e.json_path[1:]}: {e.message}"
                        for e in self.schemas.validator(wrapped).iter_errors(embedded)
                    ]
            if strict:
                unknown = set(value) - self.schemas.known_properties(schema, schema["$id"])
                if unknown:
                    problems.append(f"fields no schema names: {', '.join(sorted(unknown))}")
        if problems:
            self.errors += [f"{kind} {where}: {problem}" for problem in problems]
        else:
            self.counts[kind] = self.counts.get(kind, 0) + 1


def stream_entries(client, key):
    start = "-"
    while True:
        batch = client.xrange(key, start, "+", count=500)
        for entry_id, fields in batch:
            yield text(entry_id), {text(k): text(v) for k, v in fields.items()}
        if len(batch) < 500:
            return
        start = "(" + text(batch[-1][0])


def keys(client, pattern, of_type):
    for key in client.scan_iter(match=pattern, count=500):
        if text(client.type(key)) == of_type:
            yield text(key)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="127.0.0.1:6379", help="HOST:PORT, or redis://[USER:PASSWORD@]HOST:PORT[/DB]")
    parser.add_argument("--namespace", default="nr")
    options = parser.parse_args()
    url = options.redis
    if not url.startswith(("redis://", "rediss://")):
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            sys.exit(f"error: --redis '{options.redis}' is neither HOST:PORT nor a redis:// URL")
        url = f"redis://{host}:{port}"
    client = redis.Redis.from_url(url, socket_timeout=10)
    tag = "{" + options.namespace + "}:"
    glob_tag = tag.replace("{", "\\{").replace("}", "\\}")

    schemas = Schemas(SCHEMA_DIR)
    checker = Checker(schemas)
    known_types = schemas.event_types()

    for entry_id, fields in stream_entries(client, tag + "events"):
        checker.check("event", entry_id, fields, "event.schema.json")
        event_type = fields.get("type", "")
        if event_type not in known_types:
            checker.errors.append(f"event {entry_id}: type '{event_type}' has no schema docs/schema/events/{event_type}.json")
            continue
        try:
            data = json.loads(fields.get("data", ""))
        except ValueError as error:
            checker.errors.append(f"event {entry_id} ({event_type}): data is not JSON: {error}")
            continue
        checker.check(event_type, f"{entry_id}.data", data, f"events/{event_type}.json")
    for entry_id, fields in stream_entries(client, tag + "heartbeats"):
        checker.check("heartbeat", entry_id, fields, "heartbeat.schema.json")
    for runner, record in client.hgetall(tag + "runners").items():
        try:
            value = json.loads(record)
        except ValueError as error:
            checker.errors.append(f"runner record {text(runner)}: not JSON: {error}")
            continue
        checker.check("runner_record", text(runner), value, "runner-record.schema.json")
    for key in keys(client, glob_tag + "job:*", "hash"):
        fields = {text(k): text(v) for k, v in client.hgetall(key).items()}
        checker.check("result", key, fields, "result.schema.json")
    for key in keys(client, glob_tag + "jobs:*", "stream"):
        for entry_id, fields in stream_entries(client, key):
            checker.check("job_entry", f"{key} {entry_id}", fields, "job-entry.schema.json")
    for key in keys(client, glob_tag + "log:*", "stream"):
        for entry_id, fields in stream_entries(client, key):
            checker.check("log_entry", f"{key} {entry_id}", fields, "log-entry.schema.json")
    for entry_id, fields in stream_entries(client, tag + "dead"):
        # A dead letter keeps whatever fields the malformed entry had: only its own fields are checked.
        checker.check("dead_letter", entry_id, fields, "dead-letter.schema.json", strict=False)

    print(json.dumps({"counts": checker.counts, "errors": checker.errors}, indent=1, sort_keys=True))
    return 1 if checker.errors else 0


if __name__ == "__main__":
    sys.exit(main())
