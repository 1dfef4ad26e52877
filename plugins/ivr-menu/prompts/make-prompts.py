#!/usr/bin/env python3
"""Write the example menu's prompts: 16-bit mono 8 kHz WAV tones (python3 standard library).

greeting: 440 Hz then 550 Hz, 1.2 s; option1: 880 Hz, 0.6 s; option2: 1320 Hz, 0.6 s.
Each tone fades in and out over 10 ms. Run from anywhere: python3 make-prompts.py
"""
import math
import os
import struct
import wave

RATE = 8000
HERE = os.path.dirname(os.path.abspath(__file__))


def tone(freqs, seconds_each, amplitude=0.3):
    out = []
    for f in freqs:
        n = int(RATE * seconds_each)
        ramp = RATE // 100
        for i in range(n):
            env = min(1.0, i / ramp, (n - 1 - i) / ramp)
            out.append(int(32767 * amplitude * env * math.sin(2 * math.pi * f * i / RATE)))
    return out


def write(name, samples):
    with wave.open(os.path.join(HERE, name + ".wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(struct.pack("<%dh" % len(samples), *samples))


write("greeting", tone([440, 550], 0.6))
write("option1", tone([880], 0.6))
write("option2", tone([1320], 0.6))
