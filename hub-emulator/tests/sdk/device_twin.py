#!/usr/bin/env python3
"""A device built on Microsoft's Python device SDK (azure-iot-device), remote-controlled by
hub-emulator/tests/sdk_python.rs to prove the emulator works with the SDK.

The SDK is used unmodified, through its public API only. It always dials port 8883 (TLS) on the
connection string's GatewayHostName, else HostName; the test binds the emulator there and
hands the SDK the emulator's certificate as `server_verification_cert`.

Protocol (JSON lines): the test writes one command per line on stdin, the script answers each
with one line {"reply": OP, "ok": true, ...} or {"reply": OP, "ok": false, "error": CLASS,
"detail": TEXT, "cause": "CLASS: TEXT" of the exception's __cause__ if any}. Independently, SDK callbacks print events:
  {"event": "hello", "sdk_version": V}                 once, at start
  {"event": "connection", "connected": BOOL}           on_connection_state_change
  {"event": "desired", "patch": {...}}                 on_twin_desired_properties_patch_received
  {"event": "bye"}                                     last line, after the client shut down
Commands:
  {"op": "create", "connection_string": S, "ca_file": PATH, "options": {...}}
        IoTHubDeviceClient.create_from_connection_string(S, server_verification_cert=<PEM>,
        **options); installs the connection-state handler (replaces an earlier client)
  {"op": "create_x509", "hostname": H, "device_id": D, "cert_file": PATH, "key_file": PATH,
   "ca_file": PATH, "options": {...}}
        the same with IoTHubDeviceClient.create_from_x509_certificate
  {"op": "connect"} / {"op": "disconnect"}
  {"op": "enable_desired"}   sets the desired-patch handler (the SDK subscribes; returns after
                             the SUBACK)
  {"op": "get_twin"}         -> "twin"
  {"op": "patch_reported", "patch": {...}}
  {"op": "send_message", "data": S, "properties": {...}}   device-to-cloud telemetry
  {"op": "exit"}             shuts the client down and exits 0
End of stdin does the same as "exit". Diagnostics (the SDK's warnings) go to stderr.
"""

import json
import sys
import threading
import traceback

from azure.iot.device import IoTHubDeviceClient, Message, X509
from azure.iot.device.constant import VERSION as SDK_VERSION

_out = threading.Lock()


def emit(obj):
    line = json.dumps(obj, sort_keys=True)
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Device:
    def __init__(self):
        self.client = None

    def create(self, connection_string, ca_file, options=None):
        self._install(
            IoTHubDeviceClient.create_from_connection_string(
                connection_string, server_verification_cert=read(ca_file), **(options or {})
            )
        )
        return {}

    def create_x509(self, hostname, device_id, cert_file, key_file, ca_file, options=None):
        self._install(
            IoTHubDeviceClient.create_from_x509_certificate(
                X509(cert_file, key_file),
                hostname=hostname,
                device_id=device_id,
                server_verification_cert=read(ca_file),
                **(options or {})
            )
        )
        return {}

    def _install(self, client):
        self.shutdown()
        self.client = client
        client.on_connection_state_change = lambda: emit(
            {"event": "connection", "connected": client.connected}
        )

    def connect(self):
        self.client.connect()
        return {}

    def disconnect(self):
        self.client.disconnect()
        return {}

    def enable_desired(self):
        self.client.on_twin_desired_properties_patch_received = lambda patch: emit(
            {"event": "desired", "patch": patch}
        )
        return {}

    def get_twin(self):
        return {"twin": self.client.get_twin()}

    def patch_reported(self, patch):
        self.client.patch_twin_reported_properties(patch)
        return {}

    def send_message(self, data, properties=None):
        message = Message(data, content_encoding="utf-8", content_type="application/json")
        message.custom_properties.update(properties or {})
        self.client.send_message(message)
        return {}

    def shutdown(self):
        if self.client is not None:
            self.client.shutdown()
            self.client = None


OPS = (
    "create",
    "create_x509",
    "connect",
    "disconnect",
    "enable_desired",
    "get_twin",
    "patch_reported",
    "send_message",
)


def read(path):
    with open(path, encoding="ascii") as f:
        return f.read()


def main():
    device = Device()
    emit({"event": "hello", "sdk_version": SDK_VERSION})
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            op = command.pop("op")
            if op == "exit":
                break
            try:
                if op not in OPS:
                    raise ValueError("unknown op %r" % op)
                result = getattr(device, op)(**command)
                result.update(reply=op, ok=True)
            except Exception as e:  # noqa: BLE001 - every failure is an answer for the test
                traceback.print_exc()
                result = {"reply": op, "ok": False, "error": type(e).__name__, "detail": str(e)}
                if e.__cause__ is not None:
                    cause = e.__cause__
                    result["cause"] = "%s: %s" % (type(cause).__name__, cause)
            emit(result)
    finally:
        device.shutdown()
    emit({"event": "bye"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
