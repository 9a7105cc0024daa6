package phi4edge.engine

/**
 * WAV input: RIFF/WAVE with integer PCM (8-bit unsigned, 16, 24, 32-bit signed) or IEEE float
 * (32, 64-bit) samples, plain or WAVE_FORMAT_EXTENSIBLE, any channel count averaged to mono. The
 * samples come out as libsndfile (the Python runtime's soundfile) decodes them to float32: integers
 * scaled by 2^-(bits - 1), channels summed in float32 as numpy's mean does and divided by their
 * count.
 *
 * Only 16 kHz is taken: the app records at 16 kHz, and there is no resampler here (the Python
 * runtime resamples with libsoxr). Every size in the header is checked against the bytes there
 * are; a data chunk that claims more than the file holds is cut to what it holds (as libsndfile
 * does with files whose writer never patched the header), whole frames only.
 */
object Wav {
    private const val FORMAT_PCM = 1
    private const val FORMAT_FLOAT = 3
    private const val FORMAT_EXTENSIBLE = 0xFFFE

    // KSDATAFORMAT_SUBTYPE_* GUIDs after their first two bytes (the format tag)
    private val GUID_TAIL = byteArrayOf(0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80.toByte(), 0x00,
        0x00, 0xAA.toByte(), 0x00, 0x38, 0x9B.toByte(), 0x71)

    /** Mono float samples at 16 kHz; IllegalArgumentException with a one-line reason otherwise. */
    fun read(bytes: ByteArray, name: String): FloatArray {
        fun fail(why: String): Nothing = throw IllegalArgumentException("$name: $why")
        if (bytes.size < 12 || !tag(bytes, 0, "RIFF") || !tag(bytes, 8, "WAVE")) {
            fail(if (bytes.size >= 4 && (tag(bytes, 0, "RF64") || tag(bytes, 0, "RIFX")))
                "RF64 and big-endian RIFX WAV files are not supported" else "not a RIFF/WAVE file")
        }
        var format = -1
        var channels = 0
        var rate = 0
        var blockAlign = 0
        var bits = 0
        var dataStart = -1
        var dataLength = 0L
        var pos = 12L
        while (pos + 8 <= bytes.size) {
            val p = pos.toInt()
            val size = u32(bytes, p + 4)
            val body = pos + 8
            if (tag(bytes, p, "fmt ")) {
                if (size < 16) fail("the fmt chunk is $size bytes, too short for a WAV format")
                if (body + size > bytes.size) fail("the fmt chunk claims $size bytes but the file ends before")
                val b = body.toInt()
                format = u16(bytes, b)
                channels = u16(bytes, b + 2)
                rate = u32(bytes, b + 4).let { if (it > Int.MAX_VALUE) -1 else it.toInt() }
                blockAlign = u16(bytes, b + 12)
                bits = u16(bytes, b + 14)
                if (format == FORMAT_EXTENSIBLE) {
                    if (size < 40) fail("the WAVE_FORMAT_EXTENSIBLE fmt chunk is $size bytes, shorter than 40")
                    val sub = b + 24
                    if ((0 until 14).any { bytes[sub + 2 + it] != GUID_TAIL[it] }) fail("unknown WAVE_FORMAT_EXTENSIBLE sub-format")
                    format = u16(bytes, sub)
                }
            } else if (tag(bytes, p, "data")) {
                if (format < 0) fail("the data chunk comes before the fmt chunk")
                dataStart = body.toInt()
                dataLength = minOf(size, bytes.size - body)
                break   // the data's size may be a placeholder: nothing after it is read
            }
            pos = body + size + (size and 1L)   // chunks are padded to even sizes
        }
        if (format < 0) fail("no fmt chunk")
        if (dataStart < 0) fail("no data chunk")
        val width = when {
            format == FORMAT_PCM && bits in intArrayOf(8, 16, 24, 32) -> bits / 8
            format == FORMAT_FLOAT && (bits == 32 || bits == 64) -> bits / 8
            format == FORMAT_PCM || format == FORMAT_FLOAT -> fail("$bits-bit ${if (format == FORMAT_PCM) "integer" else "float"} samples are not supported")
            else -> fail("WAV format $format is not supported (only integer PCM and IEEE float)")
        }
        if (channels == 0) fail("the channel count is zero")
        if (blockAlign != channels * width) {
            fail("block align $blockAlign does not match $channels channels of $bits-bit samples")
        }
        if (rate != AudioSettings.SAMPLE_RATE) {
            fail("the audio is at ${if (rate < 0) "an invalid sample rate" else "$rate Hz"}; this engine takes " +
                "16 kHz audio only (resample it to 16 kHz first)")
        }
        val frames = (dataLength / blockAlign).toInt()
        if (frames == 0) fail("the file holds no audio samples")
        val out = FloatArray(frames)
        val frame = FloatArray(channels)
        var p = dataStart
        for (f in 0 until frames) {
            if (channels == 1) {
                out[f] = 0f + sample(bytes, p, format, width)   // numpy's sum starts at +0: -0 becomes +0
                p += width
                continue
            }
            for (c in 0 until channels) {
                frame[c] = sample(bytes, p, format, width)
                p += width
            }
            out[f] = (0f + pairwiseSum(frame, 0, channels)) / channels   // the reduction starts at +0
        }
        if (format == FORMAT_FLOAT && out.any { it.isNaN() || it.isInfinite() }) {
            fail("the audio contains NaN or infinite samples")
        }
        return out
    }

    /** numpy's float32 pairwise summation (what data.mean(axis=1, dtype=float32) adds with). */
    private fun pairwiseSum(v: FloatArray, off: Int, n: Int): Float {
        if (n < 8) {
            var r = 0f
            for (i in 0 until n) r += v[off + i]
            return r
        }
        if (n <= 128) {
            val r = FloatArray(8) { v[off + it] }
            var i = 8
            while (i < n - n % 8) {
                for (j in 0 until 8) r[j] += v[off + i + j]
                i += 8
            }
            var res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
            while (i < n) res += v[off + i++]
            return res
        }
        var n2 = n / 2
        n2 -= n2 % 8
        return pairwiseSum(v, off, n2) + pairwiseSum(v, off + n2, n - n2)
    }

    private fun sample(b: ByteArray, p: Int, format: Int, width: Int): Float {
        if (format == FORMAT_FLOAT) {
            return if (width == 4) java.lang.Float.intBitsToFloat(u32(b, p).toInt())
            else java.lang.Double.longBitsToDouble(u32(b, p) or (u32(b, p + 4) shl 32)).toFloat()
        }
        return when (width) {
            1 -> ((b[p].toInt() and 0xFF) - 128).toFloat() * (1f / 128f)
            2 -> ((b[p].toInt() and 0xFF) or (b[p + 1].toInt() shl 8)).toFloat() * (1f / 32768f)
            3 -> ((b[p].toInt() and 0xFF) or ((b[p + 1].toInt() and 0xFF) shl 8) or (b[p + 2].toInt() shl 16))
                .toFloat() * (1f / 8388608f)
            else -> u32(b, p).toInt().toFloat() * (1f / 2147483648f)
        }
    }

    private fun tag(b: ByteArray, p: Int, t: String) = (0 until 4).all { b[p + it] == t[it].code.toByte() }

    private fun u16(b: ByteArray, p: Int) = (b[p].toInt() and 0xFF) or ((b[p + 1].toInt() and 0xFF) shl 8)

    private fun u32(b: ByteArray, p: Int): Long = (u16(b, p).toLong() or (u16(b, p + 2).toLong() shl 16))
}
