// The demo as an Android Studio / Gradle project: open android_demo/app (this folder) in Android
// Studio. The engine's sources come from ../engine (see build.gradle.kts). Not built here: Google's
// Maven repository, which serves the Android Gradle plugin, cannot be reached from this project's
// machines; `make android-apk` (mk/android-apk.mk) builds the same sources into an APK instead.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "phi4edge-demo"
