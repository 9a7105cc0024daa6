package phi4edge.engine

import java.io.File
import java.io.FileInputStream
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.channels.FileChannel
import java.security.MessageDigest

/**
 * A bundle folder, checked as docs/bundle-format.md requires before any graph is read: every listed
 * name stays inside the folder, every listed file exists with its size, and every file the engine
 * will read (graphs, their external data, tokenizer, adapters) is listed.
 */
class Bundle private constructor(val dir: File, val manifest: Manifest) {
    companion object {
        const val MANIFEST = "manifest.json"
        const val TOKENIZER = "tokenizer.json"
        const val TOKENIZER_CONFIG = "tokenizer_config.json"
        const val CHAT_TEMPLATE = "chat_template.jinja"

        /** Open and check a bundle; `verify` also checks every file's sha256 (slow on gigabytes). */
        fun open(dir: File, verify: Boolean = false): Bundle {
            val manifestFile = File(dir, MANIFEST)
            if (!manifestFile.isFile) throw BundleException("$dir: not a phi4edge bundle (no manifest.json); create one with 'phi4edge export'")
            val manifest = Manifest.parse(manifestFile.readBytes(), manifestFile.path)
            val bundle = Bundle(dir, manifest)
            bundle.check(verify)
            return bundle
        }
    }

    /** A listed member's path, refused unless it is relative, has no `..` and resolves inside. */
    fun file(name: String): File {
        val parts = name.split('/')
        if (name.isEmpty() || name.startsWith("/") || name.contains('\\') || parts.any { it == ".." || it.isEmpty() }) {
            throw BundleException("$dir: file name '$name' is not a relative path inside the bundle")
        }
        val path = File(dir, name)
        val root = dir.canonicalFile
        if (!path.canonicalFile.path.startsWith(root.path + File.separator)) {
            throw BundleException("$dir: '$name' resolves outside the bundle (a symlink?)")
        }
        return path
    }

    private fun listed(name: String, why: String) {
        if (name !in manifest.files) throw BundleException("$dir: '$name' ($why) is not listed in the manifest's files")
    }

    private fun check(verify: Boolean) {
        for ((name, entry) in manifest.files) {
            val f = file(name)
            if (!f.isFile) throw BundleException("$dir: '$name' is listed but missing")
            if (f.length() != entry.size) throw BundleException("$dir: '$name' is ${f.length()} bytes, the manifest says ${entry.size}")
        }
        for (graph in manifest.graphs) {
            listed(graph, "a graph")
            if (manifest.ortGraphs) checkOrtIdentifier(graph)
            for (data in externalData(file(graph))) {
                val rel = (graph.substringBeforeLast('/', "").let { if (it.isEmpty()) "" else "$it/" }) + data
                file(rel)
                listed(rel, "external data of $graph")
            }
        }
        listed(TOKENIZER, "the tokenizer")
        for ((name, a) in manifest.adapters) listed(a.file, "adapter '$name'")
        if (verify) {
            for ((name, entry) in manifest.files) {
                if (sha256(file(name)) != entry.sha256) throw BundleException("$dir: '$name' does not match its sha256 in the manifest (corrupt or tampered)")
            }
        }
    }

    /** An ORT-format graph is a FlatBuffer with file identifier `ORTM` at bytes 4..8. */
    private fun checkOrtIdentifier(graph: String) {
        val head = ByteArray(8)
        val n = FileInputStream(file(graph)).use { it.read(head) }
        if (n < 8 || String(head, 4, 4, Charsets.ISO_8859_1) != "ORTM") {
            throw BundleException("$dir: '$graph' is not an ORT-format graph (no ORTM identifier)")
        }
    }

    private fun externalData(graph: File): Set<String> =
        if (manifest.ortGraphs) emptySet()   // ORT format keeps every initializer inside
        else try {
            RandomAccessFile(graph, "r").use { raf ->
                OnnxExternalData.locations(raf.channel.map(FileChannel.MapMode.READ_ONLY, 0, raf.length()))
            }
        } catch (e: IllegalArgumentException) {
            throw BundleException("$graph: not a readable ONNX model (${e.message})")
        }
}

fun sha256(file: File): String {
    val digest = MessageDigest.getInstance("SHA-256")
    FileInputStream(file).use { input ->
        val buffer = ByteArray(1 shl 20)
        while (true) {
            val n = input.read(buffer)
            if (n < 0) break
            digest.update(buffer, 0, n)
        }
    }
    return digest.digest().joinToString("") { "%02x".format(it) }
}

/**
 * The `location` of every external initializer of an ONNX model, read straight from the protobuf
 * wire format (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.external_data = 13,
 * StringStringEntryProto key = 1 / value = 2). Hand-written because only these four fields are
 * needed, and a protobuf runtime plus ONNX's generated classes would add megabytes to the app.
 * Bounds-checked: a malformed file gives IllegalArgumentException.
 */
internal object OnnxExternalData {
    fun locations(buf: ByteBuffer): Set<String> {
        val out = HashSet<String>()
        fields(buf, 0, buf.limit()) { field, start, end ->
            if (field == 7) fields(buf, start, end) { gf, gs, ge ->
                if (gf == 5) {
                    var location: String? = null
                    fields(buf, gs, ge) { tf, ts, te ->
                        if (tf == 13) {
                            var key: String? = null
                            var value: String? = null
                            fields(buf, ts, te) { ef, es, ee ->
                                if (ef == 1) key = string(buf, es, ee) else if (ef == 2) value = string(buf, es, ee)
                            }
                            if (key == "location") location = value
                        }
                    }
                    location?.let { out.add(it) }
                }
            }
        }
        return out
    }

    private fun string(buf: ByteBuffer, start: Int, end: Int): String {
        val bytes = ByteArray(end - start)
        for (i in bytes.indices) bytes[i] = buf.get(start + i)
        return String(bytes, Charsets.UTF_8)
    }

    /** Calls `onLen(field, start, end)` for each length-delimited field in [from, to); skips the rest. */
    private inline fun fields(buf: ByteBuffer, from: Int, to: Int, onLen: (Int, Int, Int) -> Unit) {
        var pos = from
        while (pos < to) {
            val (tag, p1) = varint(buf, pos, to)
            pos = p1
            val field = (tag ushr 3).toInt()
            when ((tag and 7).toInt()) {
                0 -> pos = varint(buf, pos, to).second
                1 -> pos += 8
                5 -> pos += 4
                2 -> {
                    val (len, p2) = varint(buf, pos, to)
                    require(len >= 0 && len <= to - p2) { "a field runs past its message at byte $p2" }
                    onLen(field, p2, p2 + len.toInt())
                    pos = p2 + len.toInt()
                }
                else -> throw IllegalArgumentException("unsupported wire type ${tag and 7} at byte $pos")
            }
            require(pos <= to) { "a field runs past its message" }
        }
    }

    private fun varint(buf: ByteBuffer, start: Int, end: Int): Pair<Long, Int> {
        var result = 0L
        var shift = 0
        var pos = start
        while (true) {
            require(pos < end && shift < 64) { "truncated varint at byte $start" }
            val b = buf.get(pos++).toInt()
            result = result or ((b and 0x7f).toLong() shl shift)
            if (b and 0x80 == 0) return result to pos
            shift += 7
        }
    }
}
