"""Helpers for the serial device's tests: a real pyserial port with one armed fault."""

import serial


class FaultyPort:
    """A real pyserial port with one fault on the wire, armed by the test: ``flip_write`` flips
    bit 4 of byte 13 of the next packet sent, ``cut_write`` sends only its first 15 bytes,
    ``flip_read`` flips a bit of the next reply read in a piece of two bytes or more (the
    reply's CRC32C then fails)."""

    def __init__(self, path):
        self.port = serial.Serial(path, baudrate=3_000_000, timeout=0.01)
        self.flip_write = self.cut_write = self.flip_read = False

    def write(self, data):
        data = bytearray(data)
        if self.flip_write:
            self.flip_write = False
            data[13] ^= 0x10
        if self.cut_write:
            self.cut_write = False
            data = data[:15]
        return self.port.write(data)

    def read(self, n):
        data = bytearray(self.port.read(n))
        if self.flip_read and len(data) >= 2:
            self.flip_read = False
            data[1] ^= 0x01
        return bytes(data)

    def reset_input_buffer(self):
        self.port.reset_input_buffer()

    def close(self):
        self.port.close()
