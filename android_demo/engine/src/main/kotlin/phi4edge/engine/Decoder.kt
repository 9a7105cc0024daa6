package phi4edge.engine

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtLoraAdapter
import ai.onnxruntime.OrtSession
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.LongBuffer

internal fun sessionOptions(threads: Int): OrtSession.SessionOptions = OrtSession.SessionOptions().apply {
    setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
    if (threads > 0) setIntraOpNumThreads(threads)
    // Idle intra-op threads sleep instead of spinning, as the Python runtime does: with a core busy
    // elsewhere (the UI thread on a phone) spinning threads fought it and decode fell to 0.6x.
    addConfigEntry("session.intra_op.allow_spinning", "0")
    setSessionLogLevel(ai.onnxruntime.OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR)
}

internal fun directFloats(n: Int): FloatBuffer = ByteBuffer.allocateDirect(4 * n).order(ByteOrder.nativeOrder()).asFloatBuffer()
internal fun directLongs(n: Int): LongBuffer = ByteBuffer.allocateDirect(8 * n).order(ByteOrder.nativeOrder()).asLongBuffer()

/**
 * The decoder graph on onnxruntime's Java API. One preallocated KV buffer per layer is passed as
 * both the GroupQueryAttention past input and the pinned present output (the kernel appends in
 * place), and the logits go to a pinned buffer: a decode step allocates no tensor data. (Each step
 * does wrap the preallocated attention mask in a new OnnxTensor header, since its shape grows.)
 * LoRA adapters are onnxruntime's OrtLoraAdapter, made active through RunOptions.
 */
internal class Decoder(private val bundle: Bundle, threads: Int) : AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val cfg = bundle.manifest.config
    val session: OrtSession = try {
        env.createSession(bundle.file(bundle.manifest.decoderGraph).path, sessionOptions(threads))
    } catch (e: OrtException) {
        throw BundleException("${bundle.dir}: decoder graph failed to load (${e.message?.lineSequence()?.firstOrNull()})")
    }
    private val logitsBuffer = directFloats(cfg.vocabSize)
    private val logits = OnnxTensor.createTensor(env, logitsBuffer, longArrayOf(1, 1, cfg.vocabSize.toLong()))
    private val decodeIds = directLongs(1)
    private val decodeIdsTensor = OnnxTensor.createTensor(env, decodeIds, longArrayOf(1, 1))
    private val inputs = LinkedHashMap<String, OnnxTensor>()
    private val pinned = LinkedHashMap<String, OnnxTensor>()
    private var cache: List<OnnxTensor> = emptyList()
    private var mask: LongBuffer = directLongs(0)
    private val emptyMedia: Map<String, OnnxTensor>
    private val adapters = HashMap<String, Pair<OrtLoraAdapter, OrtSession.RunOptions>>()
    private val baseRun = OrtSession.RunOptions()
    private var runOptions = baseRun
    var capacity = 0
        private set
    var length = 0   // tokens already in the KV cache
        private set

    init {
        val names = session.inputNames
        for (name in bundle.manifest.media.keys) {
            if (name !in names) throw BundleException("${bundle.dir}: the decoder's '$name' is not a graph input; re-export the bundle " +
                "with this phi4edge (onnxruntime's Java API cannot feed initializers)")
        }
        emptyMedia = bundle.manifest.media.keys.associateWith { OnnxTensor.createTensor(env, directFloats(0), longArrayOf(0, cfg.hiddenSize.toLong())) }
        pinned["logits"] = logits
    }

    val adapterNames: List<String> get() = bundle.manifest.adapters.keys.sorted()

    /** Use `name`'s LoRA adapter for the next tokens (null: the base model). Loaded on first use. */
    fun useAdapter(name: String?) {
        runOptions = if (name == null) baseRun else adapters.getOrPut(name) { loadAdapter(name) }.second
    }

    private fun loadAdapter(name: String): Pair<OrtLoraAdapter, OrtSession.RunOptions> {
        val entry = bundle.manifest.adapters[name]
            ?: throw BundleException("adapter '$name' is not in this bundle (adapters: ${adapterNames.joinToString().ifEmpty { "none" }})")
        val lora = bundle.manifest.lora ?: throw BundleException("${bundle.dir}: exported without LoRA support, so adapter '$name' cannot run")
        val file = bundle.file(entry.file)
        val header = AdapterFile.read(file)
        if (header.modelVersion != bundle.manifest.baseModelVersion) {
            throw BundleException("$file: adapter '$name' was exported for another base model (model_version ${header.modelVersion}, " +
                "this bundle is ${bundle.manifest.baseModelVersion})")
        }
        for (p in header.params) checkParam(name, p, lora)
        val adapter = try { OrtLoraAdapter.create(file.path) } catch (e: OrtException) {
            throw BundleException("$file: onnxruntime refused adapter '$name' (${e.message})")
        }
        return adapter to OrtSession.RunOptions().apply { addActiveLoraAdapter(adapter) }
    }

    /** A LoRA tensor must name a layer linear of this decoder, in its precision and shape. */
    private fun checkParam(adapter: String, p: AdapterParam, lora: String) {
        val m = Regex("""lora\.layers\.(\d+)\.(qkv_proj|o_proj|gate_up_proj|down_proj)\.(A|B)(\.scale)?""").matchEntire(p.name)
        val layer = m?.groupValues?.get(1)?.toIntOrNull()
        if (m == null || layer == null || layer >= cfg.numLayers) {
            throw BundleException("adapter '$adapter': tensor '${p.name}' matches no LoRA input of this decoder")
        }
        val (inDim, outDim) = when (m.groupValues[2]) {
            "qkv_proj" -> cfg.hiddenSize to (cfg.numHeads + 2 * cfg.numKvHeads) * cfg.headDim
            "o_proj" -> cfg.numHeads * cfg.headDim to cfg.hiddenSize
            "gate_up_proj" -> cfg.hiddenSize to 2 * cfg.intermediateSize
            else -> cfg.intermediateSize to cfg.hiddenSize
        }
        val scale = m.groupValues[4].isNotEmpty()
        val want = if (scale) "fp32" else lora
        if (AdapterFile.DTYPES[p.dtype] != want) {
            throw BundleException("adapter '$adapter': '${p.name}' is ${AdapterFile.DTYPES[p.dtype] ?: "type ${p.dtype}"}, this decoder takes $want " +
                "(re-export the adapter with the bundle's --adapter-precision)")
        }
        val a = m.groupValues[3] == "A"
        val ok = when {
            scale -> p.dims.size == 1 && (a || p.dims[0] == outDim.toLong())
            a -> p.dims.size == 2 && p.dims[0] == inDim.toLong()
            else -> p.dims.size == 2 && p.dims[1] == outDim.toLong()
        }
        if (!ok) throw BundleException("adapter '$adapter': '${p.name}' has shape ${p.dims.toList()}, the base expects " +
            if (scale) "[${if (a) "r" else outDim}]" else if (a) "[$inDim, r]" else "[r, $outDim]")
    }

    /** Make room for `tokens` tokens and start a new sequence (reallocates only to grow). */
    fun reserve(tokens: Int) {
        length = 0
        if (tokens <= capacity) return
        cache.forEach { it.close() }
        val shape = longArrayOf(1, cfg.numKvHeads.toLong(), tokens.toLong(), cfg.headDim.toLong())
        val per = cfg.numKvHeads * tokens * cfg.headDim
        cache = List(2 * cfg.numLayers) { OnnxTensor.createTensor(env, directFloats(per), shape) }
        for (i in 0 until cfg.numLayers) {
            for ((k, kind) in listOf("key", "value").withIndex()) {
                inputs["past_key_values.$i.$kind"] = cache[2 * i + k]
                pinned["present.$i.$kind"] = cache[2 * i + k]
            }
        }
        mask = directLongs(tokens)
        for (i in 0 until tokens) mask.put(i, 1L)
        capacity = tokens
    }

    /** Forget the cached tokens (the buffers stay). */
    fun reset() { length = 0 }

    /** Run `ids` after the cached tokens; `media` holds the features for their placeholders (prefill only). */
    fun forward(ids: LongArray, media: Map<String, OnnxTensor> = emptyMap()): FloatBuffer {
        val total = length + ids.size
        if (total > capacity) throw RequestException("sequence of $total tokens exceeds the reserved $capacity")
        val idsTensor = if (ids.size == 1) {
            decodeIds.put(0, ids[0]); decodeIdsTensor
        } else OnnxTensor.createTensor(env, LongBuffer.wrap(ids), longArrayOf(1, ids.size.toLong()))
        val view = mask.duplicate().apply { position(0); limit(total) } as LongBuffer
        val maskTensor = OnnxTensor.createTensor(env, view, longArrayOf(1, total.toLong()))
        try {
            inputs["input_ids"] = idsTensor
            inputs["attention_mask"] = maskTensor
            for ((name, empty) in emptyMedia) inputs[name] = media[name] ?: empty
            session.run(inputs, emptySet(), pinned, runOptions).close()
        } catch (e: OrtException) {
            throw BundleException("${bundle.dir}: the decoder failed (${e.message?.lineSequence()?.firstOrNull()})")
        } finally {
            maskTensor.close()
            if (idsTensor !== decodeIdsTensor) idsTensor.close()
        }
        length = total
        return logitsBuffer
    }

    override fun close() {
        cache.forEach { it.close() }
        emptyMedia.values.forEach { it.close() }
        adapters.values.forEach { (a, r) -> r.close(); a.close() }
        baseRun.close()
        logits.close()
        decodeIdsTensor.close()
        session.close()
    }
}
