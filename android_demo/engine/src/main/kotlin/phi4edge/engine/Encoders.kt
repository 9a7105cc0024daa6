package phi4edge.engine

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import java.nio.FloatBuffer
import java.nio.LongBuffer

/** Features for a decoder media input: [rows, hidden] float32. */
internal class Features(val data: FloatArray, val rows: Int, val hidden: Int) {
    fun tensor(env: OrtEnvironment): OnnxTensor = OnnxTensor.createTensor(env, FloatBuffer.wrap(data), longArrayOf(rows.toLong(), hidden.toLong()))

    companion object {
        fun concat(parts: List<Features>): Features {
            val hidden = parts.first().hidden
            val out = FloatArray(parts.sumOf { it.data.size })
            var at = 0
            for (p in parts) { p.data.copyInto(out, at); at += p.data.size }
            return Features(out, out.size / hidden, hidden)
        }
    }
}

private fun load(bundle: Bundle, graph: String, threads: Int, what: String): OrtSession = try {
    OrtEnvironment.getEnvironment().createSession(bundle.file(graph).path, sessionOptions(threads))
} catch (e: OrtException) {
    throw BundleException("${bundle.dir}: $what graph failed to load (${e.message?.lineSequence()?.firstOrNull()})")
}

/** Runs `session` on `feeds` (closed afterwards) and returns `output` as features. */
private fun run(session: OrtSession, feeds: Map<String, OnnxTensor>, output: String): Features = try {
    session.run(feeds, setOf(output)).use { result ->
        val t = result.get(output).get() as OnnxTensor
        val shape = t.info.shape
        val buf = t.floatBuffer
        Features(FloatArray(buf.remaining()).also { buf.get(it) }, shape[0].toInt(), shape[1].toInt())
    }
} finally {
    feeds.values.forEach { it.close() }
}

/** The vision graph: patch positions, attention bias and HD token layout from a prepared image. */
internal class VisionEncoder(bundle: Bundle, threads: Int) : AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session = load(bundle, bundle.manifest.vision!!.graph, threads, "vision")

    fun encode(image: PreparedImage): Features {
        val crops = image.cropCount
        val patches = image.patchMask.size / crops
        val index = tokenIndex(image)
        check(index.size == image.numTokens) { "token layout of ${index.size} rows for ${image.numTokens} tokens" }
        val crop = (Math.sqrt((image.pixelValues.size / crops / 3).toDouble())).toLong()
        val bias = FloatArray(image.patchMask.size) { if (image.patchMask[it]) 0f else -Float.MAX_VALUE }
        val feeds = mapOf(
            "pixel_values" to OnnxTensor.createTensor(env, FloatBuffer.wrap(image.pixelValues), longArrayOf(crops.toLong(), 3, crop, crop)),
            "position_ids" to OnnxTensor.createTensor(env, LongBuffer.wrap(positionIds(image.patchMask, crops)), longArrayOf(crops.toLong(), patches.toLong())),
            "attention_bias" to OnnxTensor.createTensor(env, FloatBuffer.wrap(bias), longArrayOf(crops.toLong(), 1, 1, patches.toLong())),
            "token_index" to OnnxTensor.createTensor(env, LongBuffer.wrap(index), longArrayOf(index.size.toLong())),
        )
        return run(session, feeds, "image_features")
    }

    override fun close() = session.close()

    companion object {
        /**
         * [crops, P] position ids: each crop's valid patches spread over the whole position grid,
         * fractional coordinates bucketed in float32 exactly as runtime/vision.py does.
         */
        fun positionIds(mask: BooleanArray, crops: Int): LongArray {
            val patches = mask.size / crops
            val side = Math.round(Math.sqrt(patches.toDouble())).toInt()
            val boundaries = FloatArray(side - 1) { ((it + 1).toDouble() / side).toFloat() }
            val out = LongArray(mask.size)
            for (c in 0 until crops) {
                val base = c * patches
                var rows = 0
                var cols = 0
                for (i in 0 until side) { if (mask[base + i * side]) rows++; if (mask[base + i]) cols++ }
                val stepH = 1f / rows.toFloat()
                val stepW = 1f / cols.toFloat()
                val limit = (1 - 1e-6).toFloat()
                val h = IntArray(side) { bucket(boundaries, minOf(it.toFloat() * stepH, limit)) }
                val w = IntArray(side) { bucket(boundaries, minOf(it.toFloat() * stepW, limit)) }
                for (i in 0 until side) for (j in 0 until side) {
                    out[base + i * side + j] = if (mask[base + i * side + j]) (h[i] * side + w[j]).toLong() else 0L
                }
            }
            return out
        }

        /** numpy's searchsorted(side="right"): boundaries <= x. */
        private fun bucket(boundaries: FloatArray, x: Float): Int = boundaries.count { it <= x }

        /**
         * Rows of [pooled features of every crop; sub separator; global separator] in reading order:
         * sub-image features of the useful area (a separator ending each row), the global
         * separator, the global image (a separator ending each row). As runtime/vision.py.
         */
        fun tokenIndex(image: PreparedImage): LongArray {
            val crops = image.cropCount
            val maskSide = Math.round(Math.sqrt((image.patchMask.size / crops).toDouble())).toInt()
            val side = maskSide / 2
            val perCrop = side * side
            val subSep = (crops * perCrop).toLong()
            val glbSep = subSep + 1
            val rows = image.rows
            val cols = image.cols
            // useful rows/columns of pooled (every other) patches over the crop grid
            fun pooled(crop: Int, i: Int, j: Int) = image.patchMask[crop * maskSide * maskSide + (2 * i) * maskSide + 2 * j]
            var usefulRows = 0
            for (r in 0 until rows) for (i in 0 until side) if (pooled(1 + r * cols, i, 0)) usefulRows++
            var usefulCols = 0
            for (c in 0 until cols) for (j in 0 until side) if (pooled(1 + c, 0, j)) usefulCols++
            val out = ArrayList<Long>(image.numTokens)
            for (y in 0 until usefulRows) {
                for (x in 0 until usefulCols) {
                    val crop = (y / side) * cols + x / side
                    out.add(((1 + crop) * perCrop + (y % side) * side + x % side).toLong())
                }
                out.add(subSep)
            }
            out.add(glbSep)
            for (y in 0 until side) {
                for (x in 0 until side) out.add((y * side + x).toLong())
                out.add(subSep)
            }
            return out.toLongArray()
        }
    }
}

/** The speech graph: log-mel features in, projected embeddings out. */
internal class SpeechEncoder(bundle: Bundle, threads: Int) : AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session = load(bundle, bundle.manifest.speech!!.graph, threads, "speech")

    /** [ceil(frames / 8), hidden] embeddings of a [frames, mels] log-mel; vision_speech when the request has an image. */
    fun encode(logMel: FloatArray, frames: Int, mels: Int, withImage: Boolean): Features {
        val tokens = (frames + 7) / 8
        val chunks = maxOf(1, (tokens + CHUNK - 1) / CHUNK)
        val chunkLen = if (chunks == 1) tokens else CHUNK
        val feeds = mapOf(
            "audio_features" to OnnxTensor.createTensor(env, FloatBuffer.wrap(logMel), longArrayOf(1, frames.toLong(), mels.toLong())),
            "key_bias" to OnnxTensor.createTensor(env, FloatBuffer.wrap(FloatArray(chunks * chunkLen)), longArrayOf(chunks.toLong(), 1, 1, chunkLen.toLong())),
        )
        return run(session, feeds, if (withImage) "vision_speech_features" else "speech_features")
    }

    override fun close() = session.close()

    companion object {
        const val CHUNK = 500   // the reference encodes longer inputs in chunks of 500 frames (after subsampling)
    }
}
