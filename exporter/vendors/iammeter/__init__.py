"""IAMMETER Wi-Fi energy meters: local HTTP API (`http`) and Modbus/TCP (`modbus`)."""
