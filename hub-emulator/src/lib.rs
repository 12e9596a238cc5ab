//! A local stand-in for Azure IoT Hub's device twin surface: device MQTT and the service REST API.
