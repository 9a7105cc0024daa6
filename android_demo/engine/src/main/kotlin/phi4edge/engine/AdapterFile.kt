package phi4edge.engine

import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel

/** One tensor of an .onnx_adapter file: its name, shape and onnxruntime data type code. */
class AdapterParam(val name: String, val dims: LongArray, val dtype: Int)

/**
 * The header of an .onnx_adapter file (onnxruntime's adapter_format FlatBuffers schema, identifier
 * `TORT`): model_version and each parameter's name, shape and type. onnxruntime's Java API loads
 * and applies adapters (OrtLoraAdapter) but exposes none of this, and the engine must refuse an
 * adapter made for other base weights or another shape before it reaches the graph. Hand-written:
 * five fields of one table do not justify the flatbuffers runtime. Every offset is bounds-checked.
 */
class AdapterFile(val modelVersion: Long, val params: List<AdapterParam>) {
    companion object {
        val DTYPES = mapOf(1 to "fp32", 10 to "fp16", 3 to "int8")

        fun read(file: File): AdapterFile = RandomAccessFile(file, "r").use { raf ->
            if (raf.length() < 8) throw BundleException("$file: not an .onnx_adapter file (too short)")
            val buf = raf.channel.map(FileChannel.MapMode.READ_ONLY, 0, raf.length()).order(ByteOrder.LITTLE_ENDIAN)
            try {
                parse(buf)
            } catch (e: IndexOutOfBoundsException) {
                throw BundleException("$file: not a readable .onnx_adapter file (an offset points outside the file)")
            } catch (e: IllegalArgumentException) {
                throw BundleException("$file: not a readable .onnx_adapter file (${e.message})")
            }
        }

        private fun parse(buf: ByteBuffer): AdapterFile {
            require(buf.get(4) == 'T'.code.toByte() && buf.get(5) == 'O'.code.toByte() && buf.get(6) == 'R'.code.toByte() &&
                buf.get(7) == 'T'.code.toByte()) { "missing the TORT identifier" }
            val root = Table(buf, buf.getInt(0))
            val version = root.field(2)?.let { buf.getInt(it).toLong() } ?: 0L
            val params = root.vector(3, 4).map { at ->
                val p = Table(buf, at + buf.getInt(at))
                val name = p.field(0)?.let { p.string(it) } ?: ""
                val dims = p.vector(1, 8).map { buf.getLong(it) }.toLongArray()
                val dtype = p.field(2)?.let { buf.getInt(it) } ?: 0
                AdapterParam(name, dims, dtype)
            }
            return AdapterFile(version, params)
        }
    }

    /** A FlatBuffers table at `pos`: fields through its vtable. */
    private class Table(val buf: ByteBuffer, val pos: Int) {
        private val vtable = pos - buf.getInt(pos)
        private val vtableSize = buf.getShort(vtable).toInt() and 0xffff

        /** Absolute position of field `index`, or null when absent. */
        fun field(index: Int): Int? {
            val slot = 4 + 2 * index
            if (slot >= vtableSize) return null
            val off = buf.getShort(vtable + slot).toInt() and 0xffff
            return if (off == 0) null else pos + off
        }

        /** Element positions of vector field `index`, refused unless the vector lies inside the file. */
        fun vector(index: Int, itemSize: Int): List<Int> {
            val at = field(index) ?: return emptyList()
            val start = at + buf.getInt(at)
            val count = buf.getInt(start)
            require(count >= 0 && start + 4 + count.toLong() * itemSize <= buf.limit()) { "a vector of $count entries runs past the end of the file" }
            return List(count) { start + 4 + it * itemSize }
        }

        fun string(at: Int): String {
            val start = at + buf.getInt(at)
            val len = buf.getInt(start)
            require(len >= 0 && start + 4L + len <= buf.limit()) { "a string runs past the end of the file" }
            val bytes = ByteArray(len)
            for (i in 0 until len) bytes[i] = buf.get(start + 4 + i)
            return String(bytes, Charsets.UTF_8)
        }
    }
}
