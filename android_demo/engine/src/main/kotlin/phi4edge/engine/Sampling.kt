package phi4edge.engine

import java.nio.FloatBuffer
import java.util.SplittableRandom

/**
 * Next-token choice: greedy (temperature 0; the first of equal maxima, as numpy's argmax), or
 * temperature + top-p sampling from a seeded generator (the same seed gives the same tokens on any
 * JVM; not the Python runtime's numpy stream).
 */
internal class Sampler(private val temperature: Float, private val topP: Float, seed: Long) {
    private val random = SplittableRandom(seed)

    init {
        if (!temperature.isFinite() || temperature < 0f) throw RequestException("temperature must be a finite number >= 0, got $temperature")
        if (!(topP > 0f && topP <= 1f)) throw RequestException("top_p must be in (0, 1], got $topP")
    }

    fun next(logits: FloatBuffer, vocab: Int): Int {
        if (temperature == 0f) return argmax(logits, vocab)
        val top = logits.get(argmax(logits, vocab))
        val order = descending(logits, vocab)
        val probs = DoubleArray(vocab) { Math.exp((logits.get(order[it]) - top).toDouble() / temperature) }
        var total = probs.sum()
        var keep = vocab
        if (topP < 1f) {   // the smallest prefix whose mass reaches top_p
            var mass = 0.0
            keep = 0
            while (keep < vocab && mass < topP * total) mass += probs[keep++]
            total = mass
        }
        var pick = random.nextDouble() * total
        for (i in 0 until keep) {
            pick -= probs[i]
            if (pick < 0) return order[i]
        }
        return order[keep - 1]
    }

    companion object {
        /**
         * Token ids by descending logit, ties in id order: one primitive sort of (order key, id)
         * pairs packed in longs, not 200K boxed comparisons per token.
         */
        fun descending(logits: FloatBuffer, vocab: Int): IntArray {
            val keys = LongArray(vocab) {
                val bits = java.lang.Float.floatToIntBits(logits.get(it))
                val ascending = if (bits < 0) bits.inv() else bits or Int.MIN_VALUE   // IEEE order, as unsigned
                val descending = (ascending.toLong() and 0xffffffffL) xor 0xffffffffL
                ((descending shl 32) or it.toLong()) xor Long.MIN_VALUE   // unsigned order -> signed order
            }
            keys.sort()
            return IntArray(vocab) { (keys[it] and 0xffffffffL).toInt() }
        }

        fun argmax(logits: FloatBuffer, vocab: Int): Int {
            var best = 0
            var value = logits.get(0)
            for (i in 1 until vocab) {
                val v = logits.get(i)
                if (v > value) { value = v; best = i }
            }
            return best
        }
    }
}
