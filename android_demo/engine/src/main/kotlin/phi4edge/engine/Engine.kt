package phi4edge.engine

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import java.io.File
import java.nio.FloatBuffer

data class EngineOptions(
    val threads: Int = 0,          // intra-op threads; 0: onnxruntime's default (one per core)
    val verify: Boolean = false,   // check every file's sha256 at open (slow on gigabytes)
)

/** One answer to produce. `adapter`: null routes by modality, "none" runs the base model. */
data class Request(
    val prompt: String,
    val image: RgbImage? = null,
    val audio: FloatArray? = null,   // 16 kHz mono samples in [-1, 1]
    val maxNewTokens: Int = 128,
    val adapter: String? = null,
    val temperature: Float = 0f,
    val topP: Float = 1f,
    val seed: Long = 0,
    val system: String? = null,
    val stopTokenIds: Set<Int>? = null,   // replaces the bundle's end ids; empty: run to maxNewTokens
)

/** One generated token and the text it completes ("" inside a multi-byte character). */
data class Step(val tokenId: Int, val text: String)

data class Result(
    val text: String,
    val tokenIds: IntArray,
    val adapter: String?,
    val promptTokens: Int,
    val prefillSeconds: Double,
    val decodeTokensPerSecond: Double,
    val finishReason: String,        // "stop" (an end token) or "length"
    val promptIds: IntArray = IntArray(0),
)

/**
 * A loaded bundle on onnxruntime's Java API: the Kotlin counterpart of the Python runtime's
 * `phi4edge.load`, implementing docs/bundle-format.md. Requests run one at a time (the KV cache is
 * per engine); call `generate` from a worker thread.
 */
class Engine private constructor(private val bundle: Bundle, private val options: EngineOptions) : AutoCloseable {
    companion object {
        const val NO_ADAPTER = "none"

        /** Open and check a bundle folder; throws BundleException naming the problem. */
        fun open(dir: File, options: EngineOptions = EngineOptions()): Engine = Engine(Bundle.open(dir, options.verify), options)
    }

    private val manifest = bundle.manifest
    private val env = OrtEnvironment.getEnvironment()
    private val tokenizer = BpeTokenizer.load(bundle.file(Bundle.TOKENIZER))
    private val chat = ChatFormat(tokenizer, bundle)
    private val decoder = Decoder(bundle, options.threads)
    private var vision: VisionEncoder? = null   // encoders load on first use
    private var speech: SpeechEncoder? = null
    private val context = manifest.config.maxPosition
    // LongRoPE: keys in the cache were rotated with the short factors until the sequence reaches the
    // original context; there the whole sequence runs again with the long ones (as transformers).
    private val ropeSwitch = if (manifest.config.ropeKind == "longrope" && manifest.config.originalMaxPosition > 0) manifest.config.originalMaxPosition else -1

    val modelName: String get() = bundle.dir.name
    val adapterNames: List<String> get() = decoder.adapterNames

    /** Prompt ids as the engine would feed them (placeholders sized for the given media). */
    fun encode(prompt: String, system: String? = null, imageTokens: Int? = null, audioTokens: Int? = null): IntArray {
        val media = ArrayList<ChatFormat.Media>()
        if (imageTokens != null) media.add(ChatFormat.Media("image", manifest.vision!!.imageTokenId, listOf(imageTokens)))
        if (audioTokens != null) media.add(ChatFormat.Media("audio", manifest.speech!!.audioTokenId, listOf(audioTokens)))
        return chat.encode(prompt, system, media)
    }

    @Synchronized
    fun generate(request: Request, onStep: (Step) -> Unit = {}): Result {
        if (request.maxNewTokens < 1) throw RequestException("maxNewTokens must be a positive integer, got ${request.maxNewTokens}")
        val sampler = Sampler(request.temperature, request.topP, request.seed)
        val image = request.image?.let { prepareImage(it) }
        val audio = request.audio?.let { prepareAudio(it) }
        val ids = encode(request.prompt, request.system, image?.numTokens, audio?.let { numAudioTokens(it.frames, AudioSettings()) })
        val n = ids.size
        if (n >= context) throw RequestException("the prompt is $n tokens; this model's context is $context tokens, so at most ${context - 1} fit with room to answer")
        val media = LinkedHashMap<String, OnnxTensor>()
        try {
            if (image != null) {
                val encoder = vision ?: VisionEncoder(bundle, options.threads).also { vision = it }
                media["image_features"] = encoder.encode(image).tensor(env)
            }
            if (audio != null) {
                val encoder = speech ?: SpeechEncoder(bundle, options.threads).also { speech = it }
                media["audio_features"] = encoder.encode(audio.features, audio.frames, audio.mels, withImage = image != null).tensor(env)
            }
            val adapter = when (request.adapter) {
                null -> (if (image != null) "vision" else if (audio != null) "speech" else null)?.takeIf { it in adapterNames }
                NO_ADAPTER -> null
                else -> request.adapter
            }
            return decode(ids, media, adapter, sampler, minOf(request.maxNewTokens, context - n),
                request.stopTokenIds ?: manifest.eosTokenIds, onStep)
        } finally {
            media.values.forEach { it.close() }
        }
    }

    private fun decode(prompt: IntArray, media: Map<String, OnnxTensor>, adapter: String?, sampler: Sampler, budget: Int,
                       stop: Set<Int>, onStep: (Step) -> Unit): Result {
        val vocab = manifest.config.vocabSize
        decoder.useAdapter(adapter)
        decoder.reserve(prompt.size + budget)
        val start = System.nanoTime()
        var logits = checked(decoder.forward(LongArray(prompt.size) { prompt[it].toLong() }, media))
        var token = sampler.next(logits, vocab)
        val first = System.nanoTime()
        val sequence = ArrayList<Long>(prompt.size + budget).apply { prompt.forEach { add(it.toLong()) } }
        val out = ArrayList<Int>()
        val stream = TextStream(tokenizer)
        val last = LongArray(1)
        while (true) {
            out.add(token)
            sequence.add(token.toLong())
            onStep(Step(token, stream.push(token)))
            if (token in stop || out.size >= budget) break
            logits = if (decoder.length == ropeSwitch) {
                decoder.reset()
                checked(decoder.forward(sequence.toLongArray()))
            } else {
                last[0] = token.toLong()
                checked(decoder.forward(last))
            }
            token = sampler.next(logits, vocab)
        }
        val decodeSeconds = (System.nanoTime() - first) / 1e9
        return Result(tokenizer.decode(out.toIntArray()), out.toIntArray(), adapter, prompt.size, (first - start) / 1e9,
            if (out.size > 1 && decodeSeconds > 0) (out.size - 1) / decodeSeconds else 0.0,
            if (token in stop) "stop" else "length", prompt)
    }

    /** Last-position logits of `ids` with `adapter` (null: none), from an empty cache: for tests. */
    @Synchronized
    internal fun logits(ids: IntArray, adapter: String?): FloatArray {
        decoder.useAdapter(adapter)
        decoder.reserve(ids.size)
        val buf = decoder.forward(LongArray(ids.size) { ids[it].toLong() })
        return FloatArray(manifest.config.vocabSize) { buf.get(it) }
    }

    /** Logits, refused when any is NaN or infinite (corrupt weights or a broken graph). */
    private fun checked(logits: FloatBuffer): FloatBuffer {
        for (i in 0 until manifest.config.vocabSize) {
            if (!logits.get(i).isFinite()) throw BundleException("${bundle.dir}: the decoder produced non-finite logits; " +
                "its weights are corrupt or the graph is broken (check with 'phi4edge inspect')")
        }
        return logits
    }

    private fun prepareImage(image: RgbImage): PreparedImage {
        val v = manifest.vision ?: throw RequestException("${bundle.dir}: this bundle has no vision encoder, so it cannot take images")
        return try {
            preprocessImage(image, ImageSettings(cropSize = v.cropSize, patchSize = v.patchSize, dynamicHd = v.dynamicHd))
        } catch (e: IllegalArgumentException) {
            throw RequestException(e.message ?: "unusable image")
        }
    }

    private class Mel(val features: FloatArray, val frames: Int, val mels: Int)

    private fun prepareAudio(wave: FloatArray): Mel {
        if (manifest.speech == null) throw RequestException("${bundle.dir}: this bundle has no speech encoder, so it cannot take audio")
        if (wave.any { !it.isFinite() }) throw RequestException("the audio contains NaN or infinite samples")
        val s = AudioSettings()
        val limit = ((context - 1) * s.compressionRate * s.downsampleRate - 1) * s.hopLength + s.winLength
        if (wave.size > limit) throw RequestException("%.1f s of audio is more than this model's context of $context tokens holds (at most %.1f s)"
            .format(wave.size / 16000.0, limit / 16000.0))
        return try {
            val mel = logMel(wave, s)
            Mel(mel.values, mel.frames, mel.nMels)
        } catch (e: IllegalArgumentException) {
            throw RequestException(e.message ?: "unusable audio")
        }
    }

    override fun close() {
        vision?.close()
        speech?.close()
        decoder.close()
    }
}
