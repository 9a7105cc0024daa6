package phi4edge.engine

import com.google.gson.JsonObject
import com.google.gson.JsonParser
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Assertions
import java.io.ByteArrayOutputStream
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Random
import javax.imageio.ImageIO
import kotlin.math.abs
import kotlin.math.cos
import kotlin.math.sin

/**
 * The Kotlin preprocessing against the Python runtime's, on the vectors that
 * android_demo/engine/vectors/preprocess_vectors.py writes under ${phi4edge.bundles}/preprocess
 * (`make android-test` writes them first; missing vectors fail the test), plus hostile inputs.
 *
 * Tolerances: pixel values within one 8-bit level (2/255 in normalised units, mean = std = 0.5),
 * masks, grids and token counts exact, log-mel within 1e-4 absolute (log-mel values run from 0 to
 * about 30, so this is about 3e-6 relative at the top), WAV samples equal to soundfile's decode.
 */
class PreprocessTest {
    // JUnit's Kotlin assertThrows is built for JVM 17 and cannot inline into this 1.8 target
    private fun assertThrows(f: () -> Unit): IllegalArgumentException =
        Assertions.assertThrows(IllegalArgumentException::class.java) { f() }

    private val dir = File(System.getProperty("phi4edge.bundles") ?: "../../build/android-test", "preprocess")

    private fun index(): JsonObject {
        val file = File(dir, "index.json")
        assertTrue(file.isFile) { "no vectors in $dir: run android_demo/engine/vectors/preprocess_vectors.py" }
        return JsonParser.parseString(file.readText()).asJsonObject
    }

    private fun floats(name: String): FloatArray {
        val buf = ByteBuffer.wrap(File(dir, name).readBytes()).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(buf.remaining()).also { buf.get(it) }
    }

    private fun settings(o: JsonObject) = ImageSettings(
        cropSize = o["crop_size"].asInt, patchSize = o["patch_size"].asInt, dynamicHd = o["dynamic_hd"].asInt,
        mean = o["mean"].asFloat, std = o["std"].asFloat)

    private fun decodePng(file: File): RgbImage {
        val img = ImageIO.read(file)
        val w = img.width
        val h = img.height
        val argb = img.getRGB(0, 0, w, h, null, 0, w)
        val rgb = ByteArray(w * h * 3)
        for (i in argb.indices) {
            rgb[3 * i] = (argb[i] shr 16).toByte(); rgb[3 * i + 1] = (argb[i] shr 8).toByte(); rgb[3 * i + 2] = argb[i].toByte()
        }
        return RgbImage(w, h, rgb)
    }

    @Test
    fun imagesMatchPython() {
        val level = 2.0 / 255   // one 8-bit level after (v / 255 - 0.5) / 0.5
        var worstCrop = 0.0
        var worstGlobal = 0.0
        var offLevels = 0L
        var total = 0L
        for (e in index()["images"].asJsonArray.map { it.asJsonObject }) {
            val name = e["name"].asString
            val s = settings(e["settings"].asJsonObject)
            val image = decodePng(File(dir, e["png"].asString))
            val start = System.nanoTime()
            val p = preprocessImage(image, s)
            val ms = (System.nanoTime() - start) / 1e6
            assertEquals(e["rows"].asInt, p.rows, "$name rows")
            assertEquals(e["cols"].asInt, p.cols, "$name cols")
            assertEquals(e["crops"].asInt, p.cropCount, "$name crops")
            assertEquals(e["num_tokens"].asInt, p.numTokens, "$name tokens")
            val mask = File(dir, e["mask"].asString).readBytes()
            assertArrayEquals(BooleanArray(mask.size) { mask[it].toInt() != 0 }, p.patchMask, "$name patch mask")
            val want = floats(e["pixels"].asString)
            assertEquals(want.size, p.pixelValues.size, "$name pixel count")
            val plane = 3 * s.cropSize * s.cropSize
            var crop = 0.0
            var global = 0.0
            for (i in want.indices) {
                val d = abs(want[i].toDouble() - p.pixelValues[i])
                if (i < plane) global = maxOf(global, d) else {
                    crop = maxOf(crop, d)
                    if (d > 1e-6) offLevels++
                    total++
                }
            }
            println("PreprocessTest image $name ${image.width}x${image.height} -> ${p.cols}x${p.rows} crops, " +
                "${p.numTokens} tokens, ${"%.1f".format(ms)} ms; max |diff| crops $crop, global $global")
            assertTrue(crop <= level + 1e-6, "$name: crop pixels differ by $crop")
            assertTrue(global <= level + 1e-6, "$name: global image differs by $global")
            worstCrop = maxOf(worstCrop, crop)
            worstGlobal = maxOf(worstGlobal, global)
        }
        println("PreprocessTest images: max |diff| crops $worstCrop (${worstCrop / level} levels, " +
            "$offLevels of $total values off), global image $worstGlobal")
    }

    @Test
    fun resizeMatchesPillow() {
        val r = index()["resize"].asJsonObject
        val src = decodePng(File(dir, r["png"].asString))
        for (e in r["sizes"].asJsonArray.map { it.asJsonObject }) {
            val w = e["width"].asInt
            val h = e["height"].asInt
            val got = resizeBilinear(src.rgb, src.width, src.height, w, h)
            assertArrayEquals(File(dir, e["rgb"].asString).readBytes(), got, "${src.width}x${src.height} to ${w}x$h")
        }
    }

    @Test
    fun cropGridsMatchPython() {
        val grids = index()["grids"].asJsonArray.map { it.asJsonObject }
        for (g in grids) {
            val w = g["width"].asInt
            val h = g["height"].asInt
            assertEquals(Pair(g["cols"].asInt, g["rows"].asInt), cropGrid(w, h, settings(g["settings"].asJsonObject)), "${w}x$h")
        }
        assertTrue(grids.size > 1000)
    }

    @Test
    fun imageRefusalsMatchPython() {
        val idx = index()
        for (e in idx["image_errors"].asJsonArray.map { it.asJsonObject }) {
            val w = e["width"].asInt
            val h = e["height"].asInt
            val err = assertThrows {
                preprocessImage(RgbImage(w, h, ByteArray(w * h * 3)), settings(e["settings"].asJsonObject))
            }
            assertEquals(e["message"].asString, err.message)
        }
        for (e in idx["pixel_limits"].asJsonArray.map { it.asJsonObject }) {
            val err = assertThrows {
                checkImagePixels(e["width"].asInt, e["height"].asInt, e["name"].asString)
            }
            assertEquals(e["message"].asString, err.message)
        }
        checkImagePixels(8000, 8000)   // exactly 64 MP is taken
    }

    @Test
    fun hostileImages() {
        assertThrows { RgbImage(0, 0, ByteArray(0)) }
        assertThrows { RgbImage(0, 10, ByteArray(0)) }
        assertThrows { RgbImage(10, -1, ByteArray(0)) }
        assertThrows { RgbImage(2, 2, ByteArray(11)) }
        assertThrows { RgbImage(65536, 65536, ByteArray(3)) }   // size overflows Int
        assertThrows { ImageSettings(cropSize = 0) }
        assertThrows { ImageSettings(patchSize = 0) }
        assertThrows { ImageSettings(dynamicHd = 0) }
        // one pixel is taken: 448x448 of one colour
        val p = preprocessImage(RgbImage(1, 1, byteArrayOf(0, 127, -1)))
        assertEquals(2, p.cropCount)
        assertTrue(p.pixelValues.all { it >= -1f && it <= 1f })
    }

    @Test
    fun wavMatchesSoundfile() {
        var mismatches = 0
        for (e in index()["audio"].asJsonArray.map { it.asJsonObject }) {
            val name = e["name"].asString
            val wave = Wav.read(File(dir, e["wav"].asString).readBytes(), e["wav"].asString)
            val want = floats(e["wave"].asString)
            assertEquals(want.size, wave.size, "$name samples")
            mismatches += want.indices.count { want[it] != wave[it] }
            assertArrayEquals(want, wave, "$name samples")
        }
        println("PreprocessTest WAV: $mismatches samples differ from soundfile's decode")
    }

    @Test
    fun logMelMatchesPython() {
        val idx = index()
        var worst = 0.0
        var worstRel = 0.0
        for (e in idx["audio"].asJsonArray.map { it.asJsonObject }) {
            val name = e["name"].asString
            val wave = floats(e["wave"].asString)
            val start = System.nanoTime()
            val mel = logMel(wave, AudioSettings())
            val ms = (System.nanoTime() - start) / 1e6
            assertEquals(e["frames"].asInt, mel.frames, "$name frames")
            assertEquals(e["n_mels"].asInt, mel.nMels, "$name mels")
            assertEquals(e["num_tokens"].asInt, numAudioTokens(mel.frames, AudioSettings()), "$name tokens")
            val want = floats(e["mel"].asString)
            assertEquals(want.size, mel.values.size)
            var d = 0.0
            for (i in want.indices) {
                val diff = abs(want[i].toDouble() - mel.values[i])
                d = maxOf(d, diff)
                worstRel = maxOf(worstRel, diff / maxOf(abs(want[i].toDouble()), 1.0))
            }
            println("PreprocessTest log-mel $name: ${mel.frames} frames, ${"%.1f".format(ms)} ms, max |diff| $d")
            assertTrue(d <= 1e-4, "$name: log-mel differs by $d")
            worst = maxOf(worst, d)
        }
        println("PreprocessTest log-mel: max |diff| $worst (relative to max(|v|, 1): $worstRel)")
        for (e in idx["audio_errors"].asJsonArray.map { it.asJsonObject }) {
            val err = assertThrows { logMel(FloatArray(e["samples"].asInt)) }
            assertEquals(e["message"].asString, err.message)
        }
        for (e in idx["audio_tokens"].asJsonArray.map { it.asJsonObject }) {
            assertEquals(e["num_tokens"].asInt, numAudioTokens(e["frames"].asInt))
        }
    }

    @Test
    fun realFftMatchesDft() {
        val n = 512
        val rnd = Random(7)
        val x = DoubleArray(n) { rnd.nextGaussian() * 1000 }
        val re = DoubleArray(n / 2 + 1)
        val im = DoubleArray(n / 2 + 1)
        RealFft(n).transform(x, re, im)
        var worst = 0.0
        for (k in 0..n / 2) {
            var r = 0.0
            var i = 0.0
            for (t in 0 until n) {
                val a = 2 * Math.PI * ((k.toLong() * t) % n) / n
                r += x[t] * cos(a); i -= x[t] * sin(a)
            }
            worst = maxOf(worst, abs(r - re[k]), abs(i - im[k]))
        }
        assertTrue(worst < 1e-8, "FFT differs from the DFT by $worst")
        for (small in intArrayOf(2, 4, 8)) {   // other powers of two
            val y = DoubleArray(small) { rnd.nextGaussian() }
            val yr = DoubleArray(small / 2 + 1)
            val yi = DoubleArray(small / 2 + 1)
            RealFft(small).transform(y, yr, yi)
            for (k in 0..small / 2) {
                val r = (0 until small).sumOf { y[it] * cos(2 * Math.PI * k * it / small) }
                val i = -(0 until small).sumOf { y[it] * sin(2 * Math.PI * k * it / small) }
                assertTrue(abs(r - yr[k]) < 1e-12 && abs(i - yi[k]) < 1e-12, "n=$small k=$k")
            }
        }
    }

    // --- WAV files built here, then broken ------------------------------------------------------------

    private class WavBuilder(
        var format: Int = 1, var channels: Int = 1, var rate: Int = 16000, var bits: Int = 16,
        var blockAlign: Int = -1, var fmtSize: Int = 16, var dataSize: Int = -1,
        var samples: ByteArray = ByteArray(3200) { (it * 7).toByte() }, var junk: ByteArray? = null,
        var dataFirst: Boolean = false, var riff: String = "RIFF",
    ) {
        fun build(): ByteArray {
            val fmt = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN)   // fmtSize is what the header claims
            fmt.putShort(format.toShort()).putShort(channels.toShort()).putInt(rate)
            val align = if (blockAlign >= 0) blockAlign else channels * bits / 8
            fmt.putInt(rate * align).putShort(align.toShort()).putShort(bits.toShort())
            val out = ByteArrayOutputStream()
            fun chunk(id: String, size: Int, body: ByteArray) {
                out.write(id.toByteArray())
                out.write(ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(size).array())
                out.write(body)
                if (body.size % 2 == 1) out.write(0)
            }
            out.write(riff.toByteArray()); out.write(ByteArray(4)); out.write("WAVE".toByteArray())
            junk?.let { chunk("LIST", it.size, it) }
            val data = { chunk("data", if (dataSize >= 0) dataSize else samples.size, samples) }
            if (dataFirst) data()
            chunk("fmt ", fmtSize, fmt.array())
            if (!dataFirst) data()
            val bytes = out.toByteArray()
            ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).putInt(4, bytes.size - 8)
            return bytes
        }
    }

    private fun refused(bytes: ByteArray, vararg words: String) {
        val err = assertThrows { Wav.read(bytes, "x.wav") }
        val msg = err.message!!
        assertTrue(msg.startsWith("x.wav: ") && '\n' !in msg, msg)
        for (w in words) assertTrue(w in msg, "'$w' not in: $msg")
    }

    @Test
    fun wavReadsWhatItShould() {
        val plain = Wav.read(WavBuilder().build(), "x.wav")
        assertEquals(1600, plain.size)
        val b = WavBuilder().build()
        assertEquals(((b[44].toInt() and 0xFF) or (b[45].toInt() shl 8)) / 32768f, plain[0])
        // an odd-sized chunk before fmt (padded), and a data size that overruns the file (cut to it)
        assertArrayEquals(plain, Wav.read(WavBuilder(junk = byteArrayOf(1, 2, 3)).build(), "x.wav"))
        assertArrayEquals(plain, Wav.read(WavBuilder().build().also { patchDataSize(it, -1) }, "x.wav"))
        assertArrayEquals(plain, Wav.read(WavBuilder(dataSize = 1 shl 30).build(), "x.wav"))
        assertArrayEquals(plain.copyOf(1000), Wav.read(WavBuilder().build().copyOf(44 + 2001), "x.wav"))
        // stereo averaged in float32
        val st = Wav.read(WavBuilder(channels = 2).build(), "x.wav")
        assertEquals(800, st.size)
        assertEquals((plain[0] + plain[1]) / 2, st[0])
    }

    private fun patchDataSize(bytes: ByteArray, size: Int) {
        ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).putInt(40, size)
    }

    @Test
    fun hostileWavs() {
        refused(ByteArray(0), "not a RIFF/WAVE file")
        refused(WavBuilder().build().copyOf(11), "not a RIFF/WAVE file")
        refused(WavBuilder(riff = "RIFX").build(), "big-endian")
        refused("RIFF\u0000\u0000\u0000\u0000AVI LIST".toByteArray(), "not a RIFF/WAVE file")
        refused(WavBuilder().build().copyOf(12), "no fmt chunk")
        refused(WavBuilder().build().copyOf(30), "fmt chunk claims")        // truncated inside fmt
        refused(WavBuilder().build().copyOf(36), "no data chunk")           // fmt, then nothing
        refused(WavBuilder().build().copyOf(44), "no audio samples")        // data chunk, no bytes
        refused(WavBuilder(fmtSize = 1_000_000).build(), "fmt chunk claims 1000000 bytes")
        refused(WavBuilder(fmtSize = 14).build(), "too short")
        refused(WavBuilder(dataFirst = true).build(), "before the fmt chunk")
        refused(WavBuilder(channels = 0).build(), "channel count is zero")
        refused(WavBuilder(blockAlign = 3).build(), "block align 3")
        refused(WavBuilder(blockAlign = 0).build(), "block align 0")
        refused(WavBuilder(bits = 12).build(), "12-bit integer")
        refused(WavBuilder(format = 3, bits = 16).build(), "16-bit float")
        refused(WavBuilder(format = 2).build(), "WAV format 2")
        refused(WavBuilder(format = 0xFFFE).build(), "EXTENSIBLE")           // fmt of 16 bytes
        refused(WavBuilder(rate = 44100).build(), "44100 Hz", "resample it to 16 kHz")
        refused(WavBuilder(rate = -1).build(), "invalid sample rate", "resample")
        refused(WavBuilder(dataSize = 0).build(), "no audio samples")
        refused(WavBuilder(samples = ByteArray(1)).build(), "no audio samples")   // half a sample
        refused(WavBuilder(channels = 65535, blockAlign = 65535 * 2 and 0xFFFF).build(), "block align")
        // an unknown chunk whose size runs past the end: no data chunk is found, nothing is read past it
        val lying = WavBuilder(junk = ByteArray(8)).build()
        ByteBuffer.wrap(lying).order(ByteOrder.LITTLE_ENDIAN).putInt(16, -1)
        refused(lying, "no fmt chunk")
        // NaN and infinity in float data
        val nan = ByteBuffer.allocate(1600).order(ByteOrder.LITTLE_ENDIAN)
        while (nan.hasRemaining()) nan.putFloat(Float.NaN)
        refused(WavBuilder(format = 3, bits = 32, samples = nan.array()).build(), "NaN")
        // many channels of a large count: all averaged, no overflow
        val many = Wav.read(WavBuilder(channels = 1000, samples = ByteArray(2000 * 3)).build(), "x.wav")
        assertEquals(3, many.size)
    }
}
