package phi4edge.engine

import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.google.gson.JsonPrimitive
import com.google.gson.JsonSyntaxException

/** A bundle that cannot be used: the message names the file or field, in one line. */
class BundleException(message: String) : Exception(message)

/** A request that cannot be answered (bad prompt, media the bundle cannot take, too long). */
class RequestException(message: String) : Exception(message)

const val FORMAT = "phi4edge-bundle"
const val FORMAT_VERSION = 1

/** `requires` names this reader implements (docs/bundle-format.md, rule 3). */
val FEATURES = setOf("media-inputs", ORT_GRAPHS)
const val ORT_GRAPHS = "ort-graphs"

class ModelConfig(
    val hiddenSize: Int, val numLayers: Int, val numHeads: Int, val numKvHeads: Int, val headDim: Int,
    val intermediateSize: Int, val vocabSize: Int, val maxPosition: Int, val ropeKind: String, val originalMaxPosition: Int,
)

class AdapterEntry(val file: String, val precision: String)

class VisionEntry(val graph: String, val dynamicHd: Int, val imageTokenId: Int, val cropSize: Int, val patchSize: Int)

class SpeechEntry(val graph: String, val audioTokenId: Int)

class FileEntry(val size: Long, val sha256: String)

/** manifest.json, checked and typed as docs/bundle-format.md says (only the fields a runtime reads). */
class Manifest(
    val config: ModelConfig, val baseId: String, val decoderGraph: String, val lora: String?,
    val media: Map<String, Int>, val adapters: Map<String, AdapterEntry>, val vision: VisionEntry?,
    val speech: SpeechEntry?, val eosTokenIds: Set<Int>, val files: Map<String, FileEntry>,
    val ortGraphs: Boolean,   // every graph is ORT format (requires "ort-graphs")
) {
    companion object {
        private const val MAX_BYTES = 16 shl 20   // a real manifest is a few KB

        fun parse(bytes: ByteArray, source: String = "manifest.json"): Manifest {
            if (bytes.size > MAX_BYTES) throw BundleException("$source: ${bytes.size} bytes is too large for a manifest")
            val root = try {
                JsonParser.parseString(String(bytes, Charsets.UTF_8))
            } catch (e: JsonSyntaxException) {
                throw BundleException("$source: not valid JSON (${e.cause?.message ?: e.message})")
            } catch (e: StackOverflowError) {
                throw BundleException("$source: JSON nested too deeply")
            }
            val m = Fields(root, "", source)
            val format = m.opt("format")
            if (format !is JsonPrimitive || !format.isString || format.asString != FORMAT) {
                throw BundleException("$source: field 'format' is not '$FORMAT': not a phi4edge bundle manifest")
            }
            val version = m.int("format_version")
            if (version != FORMAT_VERSION) {
                throw BundleException("$source: field 'format_version' is $version; this engine reads version $FORMAT_VERSION" +
                    if (version > FORMAT_VERSION) " (upgrade phi4edge to read newer bundles)" else "")
            }
            val requires = if (m.opt("requires") == null) emptyList() else m.strings("requires")
            requires.firstOrNull { it !in FEATURES }?.let {
                throw BundleException("$source: field 'requires' lists '$it', which this engine does not implement (upgrade phi4edge)")
            }
            val ortGraphs = ORT_GRAPHS in requires
            if ((m.optObj("ort") != null) != ortGraphs) {
                throw BundleException("$source: field 'ort' must be present exactly when 'requires' lists '$ORT_GRAPHS'")
            }
            val model = m.obj("model")
            val c = model.obj("config")
            val config = ModelConfig(
                c.positive("hidden_size"), c.positive("num_layers"), c.positive("num_heads"), c.positive("num_kv_heads"),
                c.positive("head_dim"), c.positive("intermediate_size"), c.positive("vocab_size"), c.positive("max_position"), c.choice("rope_kind", "default", "longrope"),
                c.optInt("original_max_position") ?: 0,
            )
            val decoder = m.obj("decoder")
            val lora = decoder.opt("lora")?.takeUnless { it.isJsonNull }?.let { decoder.choice("lora", "fp32", "fp16", "int8") }
            val media = decoder.optObj("media")?.let { md -> md.keys().associateWith { md.int(it) } } ?: emptyMap()
            val adapters = m.optObj("adapters")?.let { a ->
                a.keys().associateWith { name -> a.obj(name).let { AdapterEntry(it.string("file"), it.choice("precision", "fp32", "fp16", "int8")) } }
            } ?: emptyMap()
            val vision = m.optObj("vision")?.let { v ->
                val vc = v.obj("config")
                VisionEntry(v.string("graph"), v.optInt("dynamic_hd")?.also { if (it <= 0) v.fail("dynamic_hd", "must be > 0") } ?: 36,
                    vc.int("image_token_id"), vc.positive("crop_size"), vc.positive("patch_size"))
            }
            val speech = m.optObj("speech")?.let { s -> SpeechEntry(s.string("graph"), s.obj("config").int("audio_token_id")) }
            val eos = m.obj("generation").ints("eos_token_ids").toSet()
            val f = m.obj("files")
            val files = f.keys().associateWith { name ->
                val e = f.obj(name)
                val size = e.long("size").also { if (it < 0) e.fail("size", "must be >= 0") }
                val sha = e.string("sha256").also { if (!it.matches(Regex("[0-9a-f]{64}"))) e.fail("sha256", "is not a lowercase hex sha256") }
                FileEntry(size, sha)
            }
            val manifest = Manifest(config, model.optString("base_id") ?: "", decoder.string("graph"), lora, media, adapters,
                vision, speech, eos, files, ortGraphs)
            for (graph in manifest.graphs) {
                if (graph.endsWith(".ort") != ortGraphs) {
                    throw BundleException("$source: graph '$graph' " + if (ortGraphs) "is not named *.ort although 'requires' lists '$ORT_GRAPHS'"
                        else "is named *.ort but 'requires' does not list '$ORT_GRAPHS'")
                }
            }
            return manifest
        }
    }

    /** Every graph of the bundle: the decoder's, then the encoders'. */
    val graphs: List<String> get() = listOfNotNull(decoderGraph, vision?.graph, speech?.graph)

    /** `int(base_id[:7], 16)`: what an adapter file records in model_version. */
    val baseModelVersion: Long get() = if (baseId.isEmpty()) 0 else baseId.take(7).toLong(16)
}

/** Typed access to one JSON object of the manifest; every failure names the field's full path. */
private class Fields(private val node: JsonElement?, private val path: String, private val source: String) {
    private val o: JsonObject = node as? JsonObject ?: throw BundleException("$source: ${if (path.isEmpty()) "the manifest" else "field '$path'"} must be a JSON object")

    private fun at(key: String) = if (path.isEmpty()) key else "$path.$key"
    fun fail(key: String, why: String): Nothing = throw BundleException("$source: field '${at(key)}' $why")
    fun keys(): List<String> = o.keySet().toList()
    fun opt(key: String): JsonElement? = o.get(key)
    private fun need(key: String): JsonElement = o.get(key)?.takeUnless { it.isJsonNull } ?: fail(key, "is missing")
    fun obj(key: String) = Fields(need(key).also { if (!it.isJsonObject) fail(key, "must be an object") }, at(key), source)
    fun optObj(key: String) = opt(key)?.takeUnless { it.isJsonNull }?.let { obj(key) }
    fun string(key: String): String = (need(key) as? JsonPrimitive)?.takeIf { it.isString }?.asString ?: fail(key, "must be a string")
    fun optString(key: String): String? = opt(key)?.takeUnless { it.isJsonNull }?.let { string(key) }
    fun long(key: String): Long = integer(need(key)) ?: fail(key, "must be an integer")
    fun int(key: String): Int = long(key).let { if (it < Int.MIN_VALUE || it > Int.MAX_VALUE) fail(key, "is out of range") else it.toInt() }
    fun optInt(key: String): Int? = opt(key)?.takeUnless { it.isJsonNull }?.let { int(key) }
    fun positive(key: String): Int = int(key).also { if (it <= 0) fail(key, "must be > 0") }
    fun choice(key: String, vararg allowed: String): String =
        string(key).also { if (it !in allowed) fail(key, "is '$it', not one of ${allowed.joinToString()}") }
    fun strings(key: String): List<String> = (need(key) as? com.google.gson.JsonArray ?: fail(key, "must be a list"))
        .map { (it as? JsonPrimitive)?.takeIf { p -> p.isString }?.asString ?: fail(key, "must be a list of strings") }
    fun ints(key: String): List<Int> = (need(key) as? com.google.gson.JsonArray ?: fail(key, "must be a list"))
        .map { e -> integer(e)?.takeIf { it in 0..Int.MAX_VALUE }?.toInt() ?: fail(key, "must be a list of integers") }

    /** A JSON number without fraction (not a boolean), as the spec's *int*. */
    private fun integer(e: JsonElement): Long? {
        val p = e as? JsonPrimitive ?: return null
        if (!p.isNumber || p.asString.any { it == '.' || it == 'e' || it == 'E' }) return null
        val d = p.asBigDecimal
        return try { d.longValueExact() } catch (_: ArithmeticException) { null }
    }
}
